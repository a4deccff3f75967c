from steptool.cli import main

raise SystemExit(main())
