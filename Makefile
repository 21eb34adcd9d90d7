# d2reg: `make demo` runs the main job, `make test` the test suite. Both create/refresh .venv first.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: venv test demo lint
venv:
	@bash scripts/setup_venv.sh

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest tests

demo: venv
	$(PY) tools/demo.py $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(TASK),--task $(TASK))

lint: venv
	$(PY) -m ruff check .
