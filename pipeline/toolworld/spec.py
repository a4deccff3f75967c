"""What ToolWorld holds: categories, tools, their entities' fields and the phrasing of questions.

This file is data. `world.py` turns it into seeded entity tables and ToolBench api docs,
`tasks.py` into queries with gold plans. Names are fictional on purpose: a model cannot answer
from memory, it has to call the tools.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# Word pools (entity names and values are drawn from these with the world's seed)
# ---------------------------------------------------------------------------------------------
ADJECTIVES = (
    "Amber Ancient Arctic Autumn Azure Bold Brave Bright Bronze Calm Cedar Celestial Clever Cobalt "
    "Copper Coral Cosmic Crimson Crystal Dancing Dawn Desert Distant Dusty Eastern Electric Emerald "
    "Endless Fading Fierce Floating Frozen Gentle Gilded Golden Granite Hidden Hollow Humble Iron Ivory "
    "Jade Jolly Lively Lone Lucky Lunar Marble Midnight Misty Mystic Noble Northern Obsidian Ocean Olive "
    "Painted Pale Polar Proud Quiet Radiant Rapid Restless Rolling Royal Ruby Rustic Sapphire Scarlet "
    "Secret Shadow Silent Silver Solar Spicy Stellar Stormy Sunny Swift Tidal Twilight Velvet Violet "
    "Wandering Wild Winter Wise Zesty"
).split()
FIRST_NAMES = (
    "Ada Alina Amos Anya Arlo Bianca Boris Cara Cedric Dalia Darius Edda Elio Esme Farid Freya Gideon "
    "Greta Hana Hugo Ines Ivo Jasper Juno Kaito Kira Lars Leona Milo Mira Nadia Nico Odette Orin Petra "
    "Quinn Rafe Rosa Silas Soren Talia Teo Ulla Vera Wren Yara Zane"
).split()
LAST_NAMES = (
    "Abernathy Alcott Baptiste Barlow Castellan Delacroix Draycott Ellery Falkner Fairweather Garrick "
    "Hollins Ibarra Jorgensen Kestrel Lindqvist Marchetti Moreau Nakamura Oakes Okafor Pemberton Quill "
    "Radcliffe Rasmussen Salcedo Thorne Underwood Valdez Varga Whitlock Yilmaz Zeller Brannigan Corvin "
    "Dunmore Everly Galloway Hargrove Ivanova"
).split()
CITY_PREFIXES = (
    "Ash Bel Cor Dun El Fair Glen Har Ivy Kings Lake Mar North Oak Pine Red Stone West Amber Briar "
    "Clear Frost Gold Hazel"
).split()
CITY_SUFFIXES = "bridge ford ham haven mouth port ton vale wick field moor crest".split()
DRUG_SYLLABLES_A = "Vel Tran Cor Dex Lum Mir Nor Pax Quel Ral Sor Tev Zyn Alb Bex".split()
DRUG_SYLLABLES_B = "o i a e u".split()
DRUG_SYLLABLES_C = "rex zimol pril dazol xanil farin vastin mycin lone tide".split()
REVIEW_WORDS = (
    "absolutely stunning mostly solid a bit slow in places wonderfully crafted would recommend to friends "
    "not quite what I expected surprisingly good the details are impressive overall a pleasant experience "
    "felt too long in the middle great value for the price the staff were friendly memorable from start to finish"
).split()


# ---------------------------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FieldSpec:
    """One attribute of an entity.

    kind: int(lo, hi) | float(lo, hi, decimals) | choice(options...) | person | city | year(lo, hi)
          | date(year_lo, year_hi) | time | phone | code(prefix, digits) | letters(n) | title(nouns...)
    label: how a question names it ("release year"); ask: whether a question may ask for it (only
    values that cannot be guessed: a 1-5 star rating would be solved by chance too often).
    """

    name: str
    label: str
    kind: str
    args: tuple = ()
    ask: bool = True
    numeric: bool = False  # comparable by "which is higher"


def F(name, label, kind, *args, ask=None, numeric=None):
    """Terse FieldSpec constructor for the tables below."""
    if ask is None:
        ask = kind not in ("choice",) and not (kind == "int" and args[1] - args[0] < 40)
    if numeric is None:
        numeric = kind in ("int", "float", "year")
    return FieldSpec(name, label, kind, tuple(args), ask, numeric)


@dataclass(frozen=True)
class SubSpec:
    """A list that hangs off an entity (reviews, showtimes, price history): one extra API."""

    api_name: str  # e.g. "Movie Reviews"
    key: str  # JSON key of the list in the response
    description: str
    item_fields: tuple[FieldSpec, ...]
    n_items: tuple[int, int]
    sort_by: str  # items are sorted by this field ...
    descending: bool  # ... newest first when True
    ask_field: str  # the question asks for this field of the first item
    questions: tuple[str, ...]  # phrasings; {name} {entity}


@dataclass(frozen=True)
class ToolSpec:
    """A tool over one kind of entity: Search, Details, List-by-<filter>, and optionally a sub-list."""

    category: str
    tool_name: str
    description: str
    entity: str  # singular noun used in queries and API names ("movie")
    plural: str
    id_prefix: str
    naming: tuple  # ("adjnoun", nouns...) | ("person",) | ("city",) | ("code", prefix) | ("drug",) | ("address", nouns...)
    fields: tuple[FieldSpec, ...]
    filter_field: str  # a choice field; its options are shared out between the splits' entities
    sub: SubSpec | None = None
    search_teaser: str = ""  # one field shown next to the name in search results (disambiguation)


@dataclass(frozen=True)
class CalcSpec:
    """A computing tool (currency conversion, loan maths): NUMBER parameters, no entities."""

    category: str
    tool_name: str
    description: str
    kind: str  # "fx" | "mortgage"
    extra: dict = field(default_factory=dict)


def _reviews(entity: str, title: str) -> SubSpec:
    return SubSpec(
        api_name=f"{title} Reviews",
        key="reviews",
        description=f"Reviews of a {entity}, newest first. Needs the {entity}_id from the search endpoint.",
        item_fields=(
            F("author", "author", "person"),
            F("score", "score", "int", 1, 10),
            F("date", "date", "date", 2019, 2025),
            F("text", "text", "review", ask=False),
        ),
        n_items=(6, 14),
        sort_by="date",
        descending=True,
        ask_field="author",
        questions=(
            "Who wrote the most recent review of the {entity} {name}?",
            "Find the latest review of {name} and tell me its author.",
            "I'd like to know who posted the newest review for {name} ({entity}).",
        ),
    )


GENRES = ("Drama", "Comedy", "Thriller", "Sci-Fi", "Horror", "Animation", "Documentary", "Romance", "Western", "Musical")
PLATFORMS = ("Streamly", "FlixNow", "ViewBox", "Cinemax Plus", "PrimeView", "Hulo", "Peacockpit", "Apex TV")

TOOLS: tuple = (
    # ------------------------------------------------------------------ Movies
    ToolSpec("Movies", "CineVault", "A movie database with cast, ratings and reviews.", "movie", "movies", "mv",
             ("adjnoun", "Harbor", "Echo", "Frontier", "Horizon", "Kingdom", "Promise", "Voyage", "Legacy", "Mirage",
              "Paradox", "Requiem", "Odyssey"),
             (F("release_year", "release year", "year", 1960, 2024), F("director", "director", "person"),
              F("runtime_minutes", "runtime in minutes", "int", 80, 190), F("rating", "rating", "float", 1, 10, 1),
              F("box_office_musd", "box office (million USD)", "float", 1, 900, 1), F("genre", "genre", "choice", *GENRES)),
             "genre", _reviews("movie", "Movie"), "release_year"),
    ToolSpec("Movies", "ShowtimeFinder", "Cinemas near you, their screens and showtimes.", "cinema", "cinemas", "cn",
             ("adjnoun", "Cinema", "Theater", "Picturehouse", "Playhouse", "Multiplex", "Screens", "Cineplex", "Film House"),
             (F("city", "city", "city"), F("screens", "number of screens", "int", 2, 24), F("phone", "phone number", "phone"),
              F("opening_time", "opening time", "time"), F("ticket_price_usd", "ticket price in USD", "float", 6, 25, 2),
              F("chain", "cinema chain", "choice", "Reelhouse", "StarScreens", "Lumière Group", "CineOne", "Marquee",
                "Filmhaus")),
             "chain",
             SubSpec("Cinema Showtimes", "showtimes", "Today's showtimes of a cinema, earliest first. Needs the cinema_id.",
                     (F("time", "time", "time"), F("film", "film", "title", "Affair", "Escape", "Signal", "Summer", "Machine",
                                                   "Island", "Letter", "Garden"),
                      F("screen", "screen", "int", 1, 24, ask=False)),
                     (5, 12), "time", False, "film",
                     ("Which film has the earliest showtime today at the cinema {name}?",
                      "What's the first film showing today at {name}?",
                      "Check the showtimes of {name} ({entity}) and tell me which film plays first today.")),
             "city"),
    ToolSpec("Movies", "StreamScout", "Where series stream, with seasons and episodes.", "series", "series", "sr",
             ("adjnoun", "Chronicles", "Files", "Saga", "Diaries", "Protocol", "Academy", "Dynasty", "Station"),
             (F("seasons", "number of seasons", "int", 1, 15), F("episodes", "number of episodes", "int", 6, 250),
              F("premiere_date", "premiere date", "date", 1995, 2024), F("creator", "creator", "person"),
              F("platform", "streaming platform", "choice", *PLATFORMS)),
             "platform", None, "premiere_date"),
    # ------------------------------------------------------------------ Music
    ToolSpec("Music", "SongIndex", "Song metadata: artist, tempo, length and release.", "song", "songs", "sg",
             ("adjnoun", "Heart", "Lullaby", "Anthem", "Serenade", "Blues", "Groove", "Ballad", "Rhapsody", "Melody"),
             (F("artist", "artist", "person"), F("duration_seconds", "duration in seconds", "int", 120, 420),
              F("bpm", "tempo in BPM", "int", 60, 200), F("release_date", "release date", "date", 1970, 2024),
              F("genre", "genre", "choice", "Pop", "Rock", "Jazz", "Hip-Hop", "Folk", "Electronic", "Soul", "Metal")),
             "genre", None, "artist"),
    ToolSpec("Music", "ConcertHub", "Concerts and tours with venues, dates and prices.", "concert", "concerts", "ct",
             ("adjnoun", "Tour", "Festival", "Live", "Sessions", "Nights", "Showcase", "Jam", "Gala"),
             (F("headliner", "headliner", "person"), F("city", "city", "city"), F("date", "date", "date", 2025, 2026),
              F("ticket_price_usd", "ticket price in USD", "float", 20, 400, 2), F("capacity", "capacity", "int", 200, 60000),
              F("region", "region", "choice", "North America", "Europe", "Asia", "South America", "Oceania", "Africa")),
             "region", None, "city"),
    ToolSpec("Music", "RadioWave", "Radio stations: frequency, city, hosts and format.", "radio station",
             "radio stations", "rs", ("adjnoun", "FM", "Radio", "Waves", "Sound", "Airwaves", "Broadcast"),
             (F("frequency_mhz", "frequency in MHz", "float", 88, 108, 1), F("city", "city", "city"),
              F("host", "morning host", "person"), F("founded_year", "founding year", "year", 1930, 2020),
              F("format", "format", "choice", "Jazz", "Talk", "Rock", "Classical", "Pop", "News", "Country", "Electronic")),
             "format", None, "city"),
    # ------------------------------------------------------------------ Travel
    ToolSpec("Travel", "FlightTracker", "Live status of flights: gates, times and routes.", "flight", "flights", "fl",
             ("code", "SK", "LX", "QF", "AZ", "TP", "EI"),
             (F("origin", "origin city", "city"), F("destination", "destination city", "city"),
              F("departure_time", "departure time", "time"), F("gate", "gate", "code", "G", 2),
              F("aircraft", "aircraft", "choice", "A320", "A350", "B737", "B787", "E190", "A220"),
              F("status", "status", "choice", "On Time", "Delayed", "Boarding", "Cancelled", "Landed", "Diverted")),
             "status", None, "destination"),
    ToolSpec("Travel", "StayFinder", "Hotels with prices, stars and guest reviews.", "hotel", "hotels", "ht",
             ("adjnoun", "Inn", "Lodge", "Suites", "Resort", "Hotel", "Retreat", "Manor", "Hostel"),
             (F("city", "city", "city"), F("stars", "star rating", "int", 1, 5),
              F("price_per_night_usd", "price per night in USD", "float", 40, 600, 2), F("phone", "phone number", "phone"),
              F("check_in_time", "check-in time", "time"),
              F("amenity", "signature amenity", "choice", "Spa", "Rooftop Pool", "Free Breakfast", "Gym", "Pet Friendly",
                "Beach Access", "Casino", "Sauna")),
             "amenity", _reviews("hotel", "Hotel"), "city"),
    ToolSpec("Travel", "AirportDirectory", "Airports: codes, terminals, runways.", "airport", "airports", "ap",
             ("adjnoun", "Airfield", "Airport", "Aerodrome", "Airpark"),
             (F("iata_code", "IATA code", "letters", 3), F("city", "city", "city"),
              F("terminals", "number of terminals", "int", 1, 9), F("opened_year", "opening year", "year", 1920, 2020),
              F("passengers_m", "yearly passengers (millions)", "float", 0.5, 110, 1),
              F("country", "country", "choice", "Norland", "Estoria", "Valmora", "Kestria", "Ordovia", "Luxmark")),
             "country", None, "city"),
    # ------------------------------------------------------------------ Food
    ToolSpec("Food", "RecipeHub", "Recipes with calories, preparation time and chefs.", "recipe", "recipes", "rc",
             ("adjnoun", "Stew", "Curry", "Salad", "Pie", "Noodles", "Tacos", "Risotto", "Soup", "Skillet", "Bowl"),
             (F("calories", "calories per serving", "int", 150, 1200), F("prep_minutes", "preparation time in minutes", "int", 5, 180),
              F("servings", "servings", "int", 1, 12), F("chef", "chef", "person"),
              F("cuisine", "cuisine", "choice", "Italian", "Mexican", "Japanese", "Indian", "French", "Thai", "Greek",
                "Ethiopian")),
             "cuisine", None, "chef"),
    ToolSpec("Food", "TableTime", "Restaurants, their menus, opening hours and ratings.", "restaurant", "restaurants",
             "rt", ("adjnoun", "Spoon", "Table", "Kitchen", "Bistro", "Grill", "Diner", "Tavern", "Eatery", "Brasserie"),
             (F("city", "city", "city"), F("phone", "phone number", "phone"), F("rating", "rating", "float", 1, 5, 1, ask=False),
              F("average_bill_usd", "average bill in USD", "float", 8, 150, 2), F("opening_time", "opening time", "time"),
              F("cuisine", "cuisine", "choice", "Italian", "Mexican", "Japanese", "Indian", "French", "Thai", "Greek",
                "Ethiopian")),
             "cuisine",
             SubSpec("Restaurant Menu", "menu", "The menu of a restaurant, most popular dish first. Needs the restaurant_id.",
                     (F("dish", "dish", "title", "Ravioli", "Dumplings", "Tagine", "Gnocchi", "Paella", "Ramen", "Kebab"),
                      F("price_usd", "price in USD", "float", 4, 60, 2), F("popularity", "popularity", "int", 1, 1000, ask=False)),
                     (6, 15), "popularity", True, "dish",
                     ("What is the most popular dish at the restaurant {name}?",
                      "Which dish is the top seller on the menu of {name}?",
                      "Look at the menu of {name} ({entity}) and tell me its most popular dish.")),
             "city"),
    ToolSpec("Food", "NutriFacts", "Nutrition facts of packaged foods.", "food product", "food products", "fp",
             ("adjnoun", "Granola", "Crackers", "Yogurt", "Smoothie", "Bar", "Chips", "Cereal", "Muesli"),
             (F("calories_per_100g", "calories per 100 g", "int", 20, 650), F("protein_g", "protein per 100 g", "float", 0, 40, 1),
              F("sugar_g", "sugar per 100 g", "float", 0, 60, 1), F("barcode", "barcode", "code", "400", 10),
              F("category", "category", "choice", "Snacks", "Dairy", "Breakfast", "Drinks", "Bakery", "Frozen")),
             "category", None, "category"),
    # ------------------------------------------------------------------ Sports
    ToolSpec("Sports", "LeagueStats", "Team standings, coaches and fixtures.", "team", "teams", "tm",
             ("adjnoun", "Falcons", "Wolves", "Titans", "Rovers", "Comets", "Mariners", "Knights", "Stallions", "Herons"),
             (F("city", "home city", "city"), F("coach", "head coach", "person"), F("wins", "wins this season", "int", 0, 60),
              F("losses", "losses this season", "int", 0, 60), F("founded_year", "founding year", "year", 1880, 2015),
              F("league", "league", "choice", "Premier", "Coastal", "Continental", "Northern", "Capital", "Frontier")),
             "league",
             SubSpec("Team Fixtures", "fixtures", "Upcoming matches of a team, soonest first. Needs the team_id.",
                     (F("date", "date", "date", 2025, 2026), F("opponent", "opponent", "title", "United", "Athletic",
                                                              "Rangers", "City", "Wanderers"),
                      F("venue", "venue", "choice", "Home", "Away", ask=False)),
                     (4, 10), "date", False, "opponent",
                     ("Who does the team {name} play next?", "Which opponent is next on the fixture list of {name}?",
                      "Check the upcoming fixtures of {name} ({entity}) and name their next opponent.")),
             "city"),
    ToolSpec("Sports", "PlayerCard", "Player profiles: team, position, numbers.", "player", "players", "pl",
             ("person",),
             (F("club", "club", "title", "Athletic", "United", "Rovers", "City", "Sporting"),
              F("jersey_number", "jersey number", "int", 1, 99), F("goals", "career goals", "int", 0, 400),
              F("birth_date", "date of birth", "date", 1980, 2006), F("height_cm", "height in cm", "int", 160, 210),
              F("position", "position", "choice", "Goalkeeper", "Defender", "Midfielder", "Forward", "Winger", "Sweeper")),
             "position", None, "club"),
    ToolSpec("Sports", "StadiumGuide", "Stadiums: capacity, city, history.", "stadium", "stadiums", "sd",
             ("adjnoun", "Arena", "Park", "Field", "Stadium", "Dome", "Grounds", "Bowl", "Coliseum"),
             (F("city", "city", "city"), F("capacity", "capacity", "int", 5000, 95000),
              F("opened_year", "opening year", "year", 1890, 2022), F("record_attendance", "record attendance", "int", 5000, 120000),
              F("surface", "surface", "choice", "Grass", "Turf", "Hybrid", "Clay", "Hardwood", "Ice")),
             "surface", None, "city"),
    # ------------------------------------------------------------------ Finance
    ToolSpec("Finance", "MarketQuote", "Stock quotes, company facts and price history.", "company", "companies", "cp",
             ("adjnoun", "Industries", "Holdings", "Dynamics", "Labs", "Systems", "Partners", "Capital", "Energy"),
             (F("ticker", "ticker symbol", "letters", 4), F("price_usd", "share price in USD", "float", 2, 900, 2),
              F("market_cap_busd", "market cap (billion USD)", "float", 0.1, 900, 1), F("ceo", "CEO", "person"),
              F("employees", "number of employees", "int", 50, 300000),
              F("sector", "sector", "choice", "Technology", "Healthcare", "Energy", "Retail", "Banking", "Transport",
                "Media", "Utilities")),
             "sector",
             SubSpec("Price History", "history", "Daily closing prices, latest first. Needs the company_id.",
                     (F("date", "date", "date", 2024, 2025), F("close_usd", "closing price", "float", 2, 900, 2),
                      F("volume", "volume", "int", 1000, 9000000, ask=False)),
                     (10, 30), "date", True, "close_usd",
                     ("What was the latest closing price of {name}?", "Give me the most recent close of {name} stock.",
                      "Check the price history of {name} ({entity}) and tell me the last closing price.")),
             "ticker"),
    ToolSpec("Finance", "CoinTracker", "Crypto assets: prices, supply and launch dates.", "cryptocurrency",
             "cryptocurrencies", "cc", ("adjnoun", "Coin", "Token", "Chain", "Cash", "Ledger", "Bit"),
             (F("symbol", "symbol", "letters", 4), F("price_usd", "price in USD", "float", 0.01, 60000, 2),
              F("supply_m", "circulating supply (millions)", "float", 1, 50000, 1), F("launch_date", "launch date", "date", 2009, 2024),
              F("consensus", "consensus mechanism", "choice", "Proof of Work", "Proof of Stake", "Delegated Stake",
                "Proof of History", "Proof of Authority", "Byzantine Agreement")),
             "consensus", None, "symbol"),
    CalcSpec("Finance", "FXRates", "Currency exchange rates and conversion.", "fx",
             {"currencies": ("USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "SEK", "NOK", "INR", "BRL", "MXN")}),
    # ------------------------------------------------------------------ Books
    ToolSpec("Books", "ShelfFinder", "Books: authors, pages, ISBNs and reader reviews.", "book", "books", "bk",
             ("adjnoun", "Garden", "Letters", "Chronicle", "Secrets", "Cartographer", "Orchard", "Lighthouse", "Atlas",
              "Archive"),
             (F("author", "author", "person"), F("publication_year", "publication year", "year", 1900, 2024),
              F("pages", "number of pages", "int", 90, 1200), F("isbn", "ISBN", "code", "978-", 10),
              F("genre", "genre", "choice", "Mystery", "Fantasy", "Biography", "History", "Poetry", "Science", "Romance",
                "Travel")),
             "genre", _reviews("book", "Book"), "author"),
    ToolSpec("Books", "LibraryLink", "Public libraries, opening hours and collections.", "library", "libraries", "lb",
             ("adjnoun", "Library", "Archive", "Reading Room", "Athenaeum", "Book Hall"),
             (F("city", "city", "city"), F("phone", "phone number", "phone"), F("opening_time", "opening time", "time"),
              F("volumes", "number of volumes", "int", 5000, 900000), F("head_librarian", "head librarian", "person"),
              F("district", "district", "choice", "Old Town", "Harborside", "Uptown", "Riverside", "University", "Market")),
             "district", None, "city"),
    ToolSpec("Books", "AuthorAtlas", "Author biographies and bibliographies.", "author", "authors", "au", ("person",),
             (F("birth_year", "birth year", "year", 1900, 1995), F("notable_work", "most notable work", "title", "Garden",
                                                                    "Letters", "Chronicle", "Secrets", "Harbor"),
              F("awards", "number of awards", "int", 0, 30, ask=False), F("books_published", "books published", "int", 1, 80),
              F("language", "writing language", "choice", "English", "Spanish", "French", "German", "Japanese", "Portuguese")),
             "language", None, "language"),
    # ------------------------------------------------------------------ Weather
    ToolSpec("Weather", "SkyCast", "Current weather and 5-day forecasts by city.", "city forecast", "city forecasts",
             "wx", ("city",),
             (F("temperature_c", "current temperature in Celsius", "float", -20, 40, 1),
              F("humidity_percent", "humidity in percent", "int", 10, 100), F("wind_kph", "wind speed in km/h", "float", 0, 90, 1),
              F("pressure_hpa", "air pressure in hPa", "int", 960, 1050),
              F("condition", "condition", "choice", "Sunny", "Cloudy", "Rain", "Snow", "Fog", "Storm", "Windy", "Hail")),
             "condition",
             SubSpec("Five Day Forecast", "forecast", "The next five days, tomorrow first. Needs the city forecast id.",
                     (F("date", "date", "date", 2025, 2025), F("high_c", "high in Celsius", "float", -15, 42, 1),
                      F("low_c", "low in Celsius", "float", -25, 30, 1)),
                     (5, 5), "date", False, "high_c",
                     ("What is tomorrow's high temperature in {name}?", "Give me the forecast high for tomorrow in {name}.",
                      "Check the 5-day forecast for {name} and tell me tomorrow's high.")),
             "condition"),
    ToolSpec("Weather", "AirQualityNow", "Air-quality monitoring stations.", "air station", "air stations", "aq",
             ("adjnoun", "Monitoring Station", "Air Station", "Sensor Site", "Air Lab"),
             (F("city", "city", "city"), F("aqi", "air quality index", "int", 0, 400), F("pm25", "PM2.5 level", "float", 0, 250, 1),
              F("installed_year", "installation year", "year", 1990, 2024),
              F("dominant_pollutant", "dominant pollutant", "choice", "PM2.5", "PM10", "Ozone", "NO2", "SO2", "CO")),
             "dominant_pollutant", None, "city"),
    ToolSpec("Weather", "TideTables", "Tides and sea conditions at beaches and harbors.", "beach", "beaches", "bc",
             ("adjnoun", "Bay", "Cove", "Point", "Beach", "Sands", "Shore"),
             (F("high_tide_time", "next high tide time", "time"), F("low_tide_time", "next low tide time", "time"),
              F("water_temp_c", "water temperature in Celsius", "float", 4, 30, 1),
              F("wave_height_m", "wave height in meters", "float", 0.1, 6, 1, ask=False),
              F("region", "coast", "choice", "North Coast", "South Coast", "East Coast", "West Coast", "Islands", "Gulf")),
             "region", None, "region"),
    # ------------------------------------------------------------------ Jobs
    ToolSpec("Jobs", "JobBoard", "Job postings with salaries and locations.", "job posting", "job postings", "jb",
             ("code", "REQ-"),
             (F("title", "job title", "choice", "Data Analyst", "Nurse", "Welder", "Accountant", "Chef", "Pilot",
                "Architect", "Teacher", "Electrician", "Designer", "Pharmacist", "Engineer"),
              F("company", "company", "title", "Analytics", "Works", "Robotics", "Foods", "Logistics"),
              F("city", "city", "city"), F("salary_usd", "yearly salary in USD", "int", 30000, 250000),
              F("posted_date", "posting date", "date", 2025, 2025),
              F("employment_type", "employment type", "choice", "Full-time", "Part-time", "Contract", "Internship",
                "Temporary", "Freelance")),
             "employment_type", None, "title"),
    ToolSpec("Jobs", "CompanyProfile", "Company profiles: CEO, size, headquarters.", "employer", "employers", "em",
             ("adjnoun", "Analytics", "Works", "Robotics", "Foods", "Logistics", "Media", "Software", "Biotech"),
             (F("ceo", "CEO", "person"), F("employees", "number of employees", "int", 10, 200000),
              F("founded_year", "founding year", "year", 1850, 2022), F("headquarters", "headquarters city", "city"),
              F("industry", "industry", "choice", "Software", "Manufacturing", "Retail", "Logistics", "Biotech", "Media",
                "Agriculture", "Consulting")),
             "industry", None, "headquarters"),
    ToolSpec("Jobs", "SkillCourses", "Training courses and certifications.", "course", "courses", "cs",
             ("adjnoun", "Certificate", "Bootcamp", "Course", "Diploma", "Workshop", "Masterclass"),
             (F("instructor", "instructor", "person"), F("duration_weeks", "duration in weeks", "int", 2, 104),
              F("cost_usd", "cost in USD", "float", 50, 9000, 2), F("start_date", "start date", "date", 2025, 2026),
              F("level", "level", "choice", "Beginner", "Intermediate", "Advanced", "Expert", "Foundation", "Professional")),
             "level", None, "level"),
    # ------------------------------------------------------------------ Real Estate
    ToolSpec("Real Estate", "HomeListings", "Homes for sale: prices, sizes, agents.", "listing", "listings", "ls",
             ("address", "Street", "Avenue", "Lane", "Road", "Court", "Drive", "Terrace"),
             (F("city", "city", "city"), F("price_usd", "asking price in USD", "int", 80000, 3000000),
              F("bedrooms", "bedrooms", "int", 1, 7), F("square_feet", "floor area in square feet", "int", 400, 6000),
              F("agent", "listing agent", "person"), F("listed_date", "listing date", "date", 2024, 2025),
              F("property_type", "property type", "choice", "Condo", "Townhouse", "Detached", "Loft", "Bungalow", "Duplex")),
             "property_type", None, "city"),
    CalcSpec("Real Estate", "MortgageMath", "Loan and mortgage calculators.", "mortgage"),
    ToolSpec("Real Estate", "NeighborhoodScout", "Neighborhood statistics: rents, walkability, population.",
             "neighborhood", "neighborhoods", "nb",
             ("adjnoun", "Heights", "Park", "Village", "Commons", "Gardens", "Quarter", "Hills"),
             (F("city", "city", "city"), F("walk_score", "walk score", "int", 0, 100),
              F("median_rent_usd", "median rent in USD", "int", 600, 6000), F("population", "population", "int", 800, 90000),
              F("vibe", "vibe", "choice", "Family", "Nightlife", "Artsy", "Quiet", "Historic", "Student")),
             "vibe", None, "city"),
    # ------------------------------------------------------------------ Health
    ToolSpec("Health", "PharmaFinder", "Pharmacies: hours, phone numbers, pharmacists.", "pharmacy", "pharmacies", "ph",
             ("adjnoun", "Pharmacy", "Drugstore", "Apothecary", "Chemist"),
             (F("city", "city", "city"), F("phone", "phone number", "phone"), F("opening_time", "opening time", "time"),
              F("pharmacist", "head pharmacist", "person"),
              F("chain", "chain", "choice", "WellCare", "MediPlus", "GreenCross", "PillBox", "HealthHub", "CarePoint")),
             "chain", None, "city"),
    ToolSpec("Health", "MedGuide", "Medication facts: class, dose, manufacturer.", "medication", "medications", "md",
             ("drug",),
             (F("standard_dose_mg", "standard dose in mg", "int", 5, 1000), F("manufacturer", "manufacturer", "title",
                                                                              "Pharma", "Labs", "Biologics", "Therapeutics"),
              F("approval_year", "approval year", "year", 1960, 2024), F("half_life_hours", "half-life in hours", "float", 0.5, 96, 1),
              F("drug_class", "drug class", "choice", "Analgesic", "Antibiotic", "Antihistamine", "Statin", "Antiviral",
                "Beta Blocker", "Antacid", "Anticoagulant")),
             "drug_class", None, "drug_class"),
    ToolSpec("Health", "FitClass", "Fitness classes: instructors, times, prices.", "fitness class", "fitness classes",
             "fc", ("adjnoun", "Yoga", "Pilates", "Spin", "Bootcamp", "Zumba", "Boxing", "Barre"),
             (F("instructor", "instructor", "person"), F("start_time", "start time", "time"),
              F("duration_minutes", "duration in minutes", "int", 20, 120), F("price_usd", "drop-in price in USD", "float", 5, 60, 2),
              F("intensity", "intensity", "choice", "Low", "Moderate", "High", "Extreme", "Recovery", "Mixed")),
             "intensity", None, "intensity"),
)

# ---------------------------------------------------------------------------------------------
# Phrasings. Several per intent so that a policy cannot learn one string.
# ---------------------------------------------------------------------------------------------
ATTR_QUESTIONS = (
    "What is the {label} of the {entity} {name}?",
    "Can you tell me the {label} for {name}? It's {a_entity}.",
    "I need the {label} of {name} ({entity}).",
    "Look up {name} and tell me its {label}.",
    "Find the {entity} called {name} and give me its {label}.",
    "Do you know the {label} of {name}, the {entity}?",
)
ATTR2_QUESTIONS = (
    "What are the {label} and the {label2} of the {entity} {name}?",
    "Tell me both the {label} and the {label2} for {name} ({entity}).",
    "For the {entity} {name}, I need its {label} as well as its {label2}.",
    "Look up {name}: what's its {label}, and what's its {label2}?",
)
COMPARE_QUESTIONS = (
    "Which {entity} has the higher {label}: {name} or {name2}? Give me both values.",
    "Compare the {label} of {name} and {name2} ({plural}) and tell me which is higher.",
    "Between the {plural} {name} and {name2}, which one has a larger {label}? Please include the numbers.",
)
LIST_QUESTIONS = (
    "List a few {plural} whose {label} is {value}.",
    "Which {plural} have {value} as their {label}? Name up to three.",
    "Show me some {plural} with {label} {value}.",
    "I'm looking for {plural} in the {value} {label} group. Which ones are there?",
)
FX_CONVERT_QUESTIONS = (
    "How much is {amount} {src} in {dst}?",
    "Convert {amount} {src} to {dst} for me.",
    "I have {amount} {src}. What is that worth in {dst}?",
)
FX_RATE_QUESTIONS = (
    "What is the current exchange rate from {src} to {dst}?",
    "How many {dst} do I get for one {src} right now?",
    "Give me the {src}/{dst} exchange rate.",
)
MORTGAGE_QUESTIONS = (
    "What would the monthly payment be on a {principal} USD loan at {rate}% annual interest over {years} years?",
    "Calculate the monthly mortgage payment for {principal} USD, {rate}% a year, {years} years.",
    "If I borrow {principal} USD for {years} years at {rate}% interest, how much do I pay each month?",
)
OPENERS = ("", "", "", "Hi! ", "Quick question: ", "Please help me out. ", "I'm putting together some notes. ")
CONNECTORS = (" Also, ", " In addition, ", " Then ", " Besides that, ", " One more thing: ")
