# Efficient Deep Learning from Scratch: the two commands a newcomer needs are
#   make book    build the HTML book into _build/html
#   make test    run everything CI runs
# Every target sets up what it needs (the virtualenv in .venv, with pinned dependencies).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
NB     ?=
export MPLBACKEND ?= Agg

.PHONY: setup book test unit notebooks execute execute-all dry-run gpu-book student lab clean help

help:
	@echo "make book      build the book into _build/html (strict: warnings are errors)"
	@echo "make test      unit tests + every notebook at BOOK_SCALE=smoke + strict book build"
	@echo "make unit      unit tests of minilib only"
	@echo "make notebooks execute every notebook at BOOK_SCALE=smoke (nbval)"
	@echo "make execute NB=notebooks/01_measuring/01_1_timing.py [BOOK_SCALE=cpu]"
	@echo "               run one notebook top to bottom and store its outputs in the .ipynb"
	@echo "make execute-all  re-execute every notebook serially (on an idle machine!) and store them"
	@echo "make dry-run   every notebook at gpu-scale sizes, a step or two of each loop, on the CPU"
	@echo "make gpu-book  on a GPU box with torch preinstalled: the whole book at gpu scale, stored"
	@echo "make student   the student edition (no solution cells) in _student/"
	@echo "make lab       open the notebooks in JupyterLab"

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[book,test]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3"
	@touch $(STAMP)

book: setup
	rm -rf _build
	$(BIN)/jupyter-book build . --all -W -n --keep-going
	@echo
	@echo "The book is at file://$(CURDIR)/_build/html/index.html"

# One pytest run: unit tests, the strict book build and sync checks (tests/), and every
# notebook top to bottom at smoke scale on a fresh kernel (nbval). --dist loadfile keeps
# the cells of one notebook on one worker.
test: setup
	BOOK_SCALE=smoke $(BIN)/python -m pytest -n 2 --dist loadfile --nbval-lax \
		--nbval-cell-timeout=900 tests notebooks

unit: setup
	$(BIN)/python -m pytest -n 2 tests

notebooks: setup
	BOOK_SCALE=smoke $(BIN)/python -m pytest -n 2 --dist loadfile --nbval-lax \
		--nbval-cell-timeout=900 notebooks

# Executes notebooks serially with tools/run_book.py (nbclient): one fresh kernel per
# notebook, outputs stored in the paired .ipynb, wall times appended to notebooks/RUNTIMES.md.
# Store notebooks only from an idle machine: nothing else heavy running meanwhile.
execute: setup
	@test -n "$(NB)" || (echo "usage: make execute NB=notebooks/<chapter>/<notebook>.py [BOOK_SCALE=cpu|gpu|smoke]"; exit 2)
	$(BIN)/python tools/run_book.py $(NB)

execute-all: setup
	$(BIN)/python tools/run_book.py --all

# gpu-scale sizes on the CPU, each training loop, sweep and benchmark cut to a step or two:
# shape, device and memory-layout errors at gpu sizes show up before a GPU is rented.
dry-run: setup
	BOOK_DRYRUN=1 BOOK_SCALE=gpu $(BIN)/python tools/run_book.py --all --no-store --table ""

# On a GPU machine with PyTorch (CUDA) preinstalled and no network: no venv, the system
# Python's torch, jupytext/nbclient/ipykernel installed there (see book/how_to_run.md).
GPU_PYTHON ?= python3
gpu-book:
	BOOK_SCALE=gpu PYTHONPATH=$(CURDIR):$$PYTHONPATH $(GPU_PYTHON) tools/run_book.py --all

student: setup
	$(BIN)/python tools/student_edition.py

# The whole book as one A4 PDF, _build/latex/book.pdf (Jupyter Book's LaTeX builder, xelatex).
# On Debian/Ubuntu it installs the TeX Live packages it needs the first time (apt-get, as
# root or through sudo). Not part of `make test`.
TEX_PACKAGES := latexmk texlive-latex-recommended texlive-latex-extra texlive-fonts-recommended \
	tex-gyre texlive-xetex fonts-freefont-otf
.PHONY: pdf
pdf: setup
	@dpkg -s $(TEX_PACKAGES) >/dev/null 2>&1 || { \
		SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		echo "make pdf: installing TeX Live: $(TEX_PACKAGES)"; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(TEX_PACKAGES); }
	rm -rf _build/latex
	$(BIN)/jupyter-book build . --builder pdflatex
	@test -f _build/latex/book.pdf
	@echo
	@echo "The PDF is at $(CURDIR)/_build/latex/book.pdf"

lab: setup
	$(BIN)/python -m pip install -q "jupyterlab>=4"
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf _build .pytest_cache
