# LeukPortal developer commands. `make run` sets everything up on a fresh
# machine and starts the portal; `make test` runs the test suite.
# Two install profiles (requirements/): `make install` is the runtime profile (portal + worker, models
# served by ONNX Runtime, no PyTorch); `make install-train` adds PyTorch, timm, ONNX export and the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUNTIME_REQUIREMENTS := requirements/runtime.txt
TRAIN_REQUIREMENTS := requirements/runtime.txt requirements/train.txt
HOST ?= 127.0.0.1
PORT ?= 8000
APT_PACKAGES := pkg-config default-libmysqlclient-dev build-essential

.PHONY: install install-train system-deps migrate run serve worker test screenshots clean-var

system-deps:
	@if ! { command -v pkg-config >/dev/null && pkg-config --exists mysqlclient; }; then \
		echo "Installing system packages for mysqlclient: $(APT_PACKAGES)"; \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES); \
	fi

# pip_install PROFILE FILES: pip install -r requirements/PROFILE.txt unless FILES are unchanged since the
# last install of that profile (a stamp in the venv holds their contents).
define pip_install
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@stamp=$(VENV)/.requirements-$(1).installed; \
	if cat $(2) | cmp -s - $$stamp; then \
		echo "The $(1) requirements are unchanged since the last install."; \
	else \
		$(PY) -m pip install --disable-pip-version-check -r requirements/$(1).txt && \
		cat $(2) > $$stamp; \
	fi
endef

install: system-deps
	$(call pip_install,runtime,$(RUNTIME_REQUIREMENTS))

# Training, ONNX export (`python -m ml export`) and the test suite: the runtime profile plus PyTorch & co.
install-train: install
	$(call pip_install,train,$(TRAIN_REQUIREMENTS))

migrate: install
	$(PY) manage.py migrate --noinput

# Celery workers. Classification: CONCURRENCY processes on CELERY_QUEUE; each
# sizes its model threads to its share of the cores (leukportal/celery.py).
# Heat maps: one process at the lowest CPU priority on a queue of its own, so
# they only use what classification leaves and never delay a result.
CELERY_WORKER := $(VENV)/bin/celery -A leukportal worker --loglevel INFO
CLASSIFY_WORKER := $(CELERY_WORKER) -Q "$${CELERY_QUEUE:-leukportal}" -n classify@%h
HEATMAP_WORKER := ML_RUNTIME_THREADS=1 nice -n 19 $(CELERY_WORKER) \
	-Q "$${CELERY_HEATMAP_QUEUE:-$${CELERY_QUEUE:-leukportal}-heatmaps}" --concurrency 1 -n heatmaps@%h

# Development mode: DEBUG=1 unless DEBUG is set, for the migrations too. The settings default to
# DEBUG off, so everything else (`make serve`, `make worker`) needs SECRET_KEY and ALLOWED_HOSTS.
run screenshots: export DEBUG := $(or $(DEBUG),1)

# Web server and the workers (classification with beat for the periodic sweep,
# and heat maps) together; Ctrl-C stops them all.
run: migrate
	@echo "LeukPortal on http://$(HOST):$(PORT)/ — the first account you sign up becomes the administrator"
	@echo "(development mode; elsewhere PORTAL_BOOTSTRAP_ADMIN_EMAIL or: $(PY) manage.py createsuperuser)."
	@$(CLASSIFY_WORKER) -B --concurrency $${CONCURRENCY:-1} & worker=$$!; \
	$(HEATMAP_WORKER) & heatmaps=$$!; \
	trap 'kill $$worker $$heatmaps 2>/dev/null; wait $$worker $$heatmaps 2>/dev/null' EXIT INT TERM; \
	$(PY) manage.py runserver $(HOST):$(PORT)

# Production web server (instead of runserver): gunicorn, behind a TLS proxy that
# serves STATIC_ROOT at /static/. Needs DEBUG=0, SECRET_KEY and ALLOWED_HOSTS (README, Security).
serve: migrate
	$(PY) manage.py collectstatic --noinput
	$(VENV)/bin/gunicorn leukportal.wsgi:application --bind $(HOST):$(PORT) \
		--workers $${WEB_WORKERS:-3} --timeout 60 --max-requests 1000 --max-requests-jitter 100 \
		--forwarded-allow-ips "$${FORWARDED_ALLOW_IPS:-127.0.0.1}" --access-logfile -

# The workers without the web server and without beat; Ctrl-C stops both.
worker: migrate
	@$(HEATMAP_WORKER) & heatmaps=$$!; \
	trap 'kill $$heatmaps 2>/dev/null; wait $$heatmaps 2>/dev/null' EXIT INT TERM; \
	$(CLASSIFY_WORKER) --concurrency $${CONCURRENCY:-1}

# One torch thread per process: the tests' models are tiny, and the end-to-end tests run a
# Celery worker beside pytest, where two multi-threaded processes on two cores spin-wait.
test: install-train
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest

screenshots: install-train migrate
	$(PY) scripts/screenshots.py
	SCREENSHOT_DIR=docs/screenshots $(PY) -m pytest -q tests/review/test_review_browser.py \
		tests/screening/test_screening_browser.py::test_the_screen_check_on_the_dashboard_fits_a_phone_and_a_desktop

clean-var:
	rm -rf var/celery var/celerybeat-schedule*
