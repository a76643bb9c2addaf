# kernelscope: the README's two commands and the checks around them.
# The work is done by scripts/dev.sh (setup in .venv, run, test) and
# scripts/docker-check.sh (build and run the image in a private Docker engine).

.PHONY: run test check setup lint docker-check ci clean

run:            ## set up .venv and serve the app on http://127.0.0.1:8000
	bash scripts/dev.sh run

test:           ## set up .venv with the test extra, install chromium if missing, run the house checks and all tests
	bash scripts/dev.sh test

check:          ## the house checks alone: ruff, ruff format --check, import contracts, mypy
	bash scripts/dev.sh check

setup:          ## only install into .venv (with the test extra)
	bash scripts/dev.sh setup test

lint:           ## lint the Dockerfile
	bash scripts/dev.sh setup test
	.venv/bin/hadolint Dockerfile

docker-check:   ## build the image and run it in a private Docker engine (root)
	bash scripts/docker-check.sh

ci:             ## what CI runs
	bash .ci/run

clean:          ## remove the venv and build leftovers (keeps kernelscope-data/)
	rm -rf .venv build dist *.egg-info
