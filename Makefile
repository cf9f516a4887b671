# The README's two commands: `make demo` and `make test`. Each builds .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO   ?= runs/demo

.PHONY: demo test docs lint bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch 2.13.0 sits in this machine's package store; pinning it here keeps pip
	# from pulling a multi-GB CUDA build. pyproject.toml only asks for torch>=2.4.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# A real comparison of inits: SIREN on a 96 px crop of scikit-image's camera, default init vs
# target-noise pretraining, 3 seeds; ends with the table, then writes plots to $(DEMO)/plots.
demo: $(STAMP)
	$(BIN)/initium run image-fit --image camera --size 96 --arch siren --methods default,noise \
	    --seeds 3 --steps 300 --thresholds 25,30,40 --out $(DEMO) --report

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/pytest

# The documentation site (MkDocs + mkdocstrings, the [docs] extra that [dev] pulls in) into site/;
# strict: a warning (a broken link, a docstring mkdocstrings cannot read) fails the build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/inr_convergence.py

clean:
	rm -rf $(VENV) runs site
