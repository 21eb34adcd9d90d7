# d2reg: `make demo` runs the main job, `make test` the test suite. Both create/refresh .venv first.
PY := .venv/bin/python
export PYTHONUNBUFFERED := 1

.PHONY: venv test demo lint
venv:
	@bash scripts/setup_venv.sh

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest tests

# make demo [WEIGHTS=dinov2_or_dinov3.pth] [TASK=sem_seg|panoptic] [FAMILY=dinov3] [BUDGET=minutes, default 6.5; 0: the full tuned run]
demo: venv
	$(PY) tools/demo.py $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(TASK),--task $(TASK)) $(if $(FAMILY),--family $(FAMILY)) $(if $(BUDGET),--time-budget $(BUDGET))

lint: venv
	$(PY) -m ruff check .
