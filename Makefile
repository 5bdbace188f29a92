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

.PHONY: setup book test unit notebooks execute lab clean help

help:
	@echo "make book      build the book into _build/html (strict: warnings are errors)"
	@echo "make test      unit tests + every notebook at BOOK_SCALE=smoke + strict book build"
	@echo "make unit      unit tests of minilib only"
	@echo "make notebooks execute every notebook at BOOK_SCALE=smoke (nbval)"
	@echo "make execute NB=notebooks/01_measuring/01_1_timing.py [BOOK_SCALE=cpu]"
	@echo "               run one notebook top to bottom and store its outputs in the .ipynb"
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

execute: setup
	@test -n "$(NB)" || (echo "usage: make execute NB=notebooks/<chapter>/<notebook>.py [BOOK_SCALE=cpu|gpu|smoke]"; exit 2)
	@# The inline backend, whatever MPLBACKEND says (Agg would store no figures), and no
	@# progress bars in the stored outputs.
	TQDM_DISABLE=1 MPLBACKEND=module://matplotlib_inline.backend_inline $(BIN)/jupytext --to ipynb --execute $(NB)
	@# Widget state (tqdm.auto, ipywidgets) would bloat the stored notebook: drop it.
	$(BIN)/python -c "import json,sys; p=sys.argv[1]; nb=json.load(open(p)); nb['metadata'].pop('widgets',None); json.dump(nb,open(p,'w'),indent=1,ensure_ascii=False); open(p,'a').write(chr(10))" $(basename $(NB)).ipynb

lab: setup
	$(BIN)/python -m pip install -q "jupyterlab>=4"
	$(BIN)/jupyter lab notebooks

clean:
	rm -rf _build .pytest_cache
