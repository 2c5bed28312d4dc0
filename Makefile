# deskd: the two set-up commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: bench-agent bench-api sdk-venv
.PHONY: all build build-debug test unit fuzz e2e rig-self-test bench run deps install-deps-test lint image image-boot-test

all: build

build:
	$(CARGO) build --release --workspace

build-debug:
	$(CARGO) build --workspace

## Runs the make targets $(1) in order, each in a sub-make, printing how long each took.
define stages
	@for t in $(1); do s=$$(date +%s); $(MAKE) --no-print-directory $$t || { echo "make $@: stage $$t FAILED after $$(( $$(date +%s) - s )) s" >&2; exit 1; }; echo "make $@: stage $$t took $$(( $$(date +%s) - s )) s" >&2; done
endef

## Every test: unit and integration tests, then the end-to-end tests in the rig. Each rig stage has
## its own timeout and all share one deadline (tests/rig/README.md, "Time limits"), so even a stuck
## one ends well within CI's 90 minutes.
test:
	$(call stages,deps install-deps-test unit fuzz e2e)
## The rig stages share one deadline (tests/rig/run caps each run's timeout to it): 80 minutes after
## `make test` or `make e2e` starts, retries included, or the RIG_DEADLINE given (seconds since the epoch).
test e2e: export RIG_DEADLINE := $(or $(RIG_DEADLINE),$(shell echo $$(( $$(date +%s) + 80 * 60 ))))

## The Debian packages the tests need (installed when run as root, named otherwise).
deps:
	tests/install-deps

## tests/install-deps fails loudly, naming them, when listed packages or tools are absent after its
## install (against stand-ins for apt; seconds).
install-deps-test:
	tests/install-deps-test

## Unit tests, agent tests against Xvfb, API tests against a daemon on a temporary socket.
unit: sdk-venv
	$(CARGO) test --workspace -- --skip fuzz_
	# The agent's X tests once more on the image's X server, TigerVNC's Xvnc, with the binaries
	# built above (`cargo test -p deskd-agent` would rebuild its dependencies for its own features).
	DESKD_TEST_X_SERVER=xvnc CARGO=$(CARGO) tests/run-built-tests deskd-agent --skip fuzz_

## Fuzz targets on stable Rust (bolero's random engine under `cargo test`; README "Fuzzing"):
## virtio queues (block, net, rng, vsock), the vsock connection state machine, the MMIO transport
## and its restore, the console and port devices, the snapshot reader, the API's JSON bodies and
## the agent protocol. Each first replays the inputs kept beside it in __fuzz__/<target>/corpus
## and crashes/, then runs FUZZ_SECONDS of random inputs (4 here; a plain `cargo test` gives each 1
## s; `make fuzz FUZZ_SECONDS=600` for a long run).
FUZZ_SECONDS ?= 4
fuzz:
	# --workspace, as `make unit` builds: a `-p` selection would rebuild for its own features.
	BOLERO_RANDOM_TEST_TIME_MS=$$(( $(FUZZ_SECONDS) * 1000 )) $(CARGO) test --workspace --lib fuzz_

## The official orgo Python SDK from PyPI in target/sdk-venv, the client of the SDK tests.
sdk-venv:
	bash tests/sdk/setup.sh

## End-to-end tests: they need real KVM, which the rig provides on hosts without it. Each rig test
## runs under tests/rig/retry-on-crash: again after a recorded fault of the emulator (up to three times, while the deadline leaves room), never
## after a failure of its own. The binary they use: $$DESKD, else the debug build (tests/lib/common.sh).
e2e:
	$(call stages,build-debug rig-self-test vmm-e2e image-boot-xga sdk-e2e)

## A computer from POST /computers driven by curl and the official orgo SDK (PyPI), in the rig
## (issue 7). E2E_VARIANT=minimal runs the minimal image as the default template.
E2E_VARIANT ?= desktop
.PHONY: sdk-e2e
## Two rigs, each booted fresh: the API flow with the SDK test and resize, then the templates with
## files and the power steps (tests/rig/README.md, "Faults of the emulator": the L1 has died at ~26
## minutes of uptime). RIG_RESIZE_FLOW=0 / RIG_FILES_FLOW=0 leave resize / files out.
sdk-e2e: build-debug
	tests/rig/retry-on-crash tests/sdk-rig-e2e --variant $(E2E_VARIANT) --skip-templates
	tests/rig/retry-on-crash tests/sdk-rig-e2e --variant $(E2E_VARIANT) --templates-only

## deskd's VMM boots Debian's cloud kernel: disk, vsock, reboot, poweroff, power button (issue 6).
.PHONY: vmm-e2e
vmm-e2e: build-debug
	tests/rig/retry-on-crash tests/vmm/e2e

## deskd's VMM against QEMU -M microvm in the rig: boot to userspace, VMM memory (issue 6).
.PHONY: bench-vmm
bench: bench-vmm
bench-vmm: build
	benches/vmm-boot

rig-self-test: build-debug
	tests/rig/run --self-test

## The default guest image system/desktop, built from Debian packages and installed into
## $(DATA_DIR)/images/system/desktop/1.0.0/ (images/README.md). VARIANT=minimal: the same without the browser.
VARIANT ?= desktop
DATA_DIR ?= /var/lib/deskd
image:
	images/build.sh --variant $(VARIANT) --install $(DATA_DIR)

## Boots the image (in the rig where needed): agent /health, Xvfb resolutions, desktop screenshot.
image-boot-test: build-debug
	tests/rig/retry-on-crash tests/image/boot-test --variant $(VARIANT)

## The same test's boot at a resolution given on the kernel command line, alone: what `make e2e`
## runs, since the API flow's first computer boots the same image at the default resolution (one
## cold boot fewer in the rig, about 3 minutes).
.PHONY: image-boot-xga
image-boot-xga: build-debug
	tests/rig/retry-on-crash tests/image/boot-test --variant $(VARIANT) --case xga

## Benchmarks: each prints its figures next to what they were compared with in the same run.
bench: bench-agent bench-api bench-network

## Create-to-running and the daemon's overhead on screenshot/click/bash against a real VM, in the rig.
.PHONY: bench-computer
bench-computer: build-debug
	benches/computer-rig --variant $(E2E_VARIANT)

## Suspend and resume of a 4 GiB desktop next to QEMU's migrate-to-file and -incoming, in the rig.
.PHONY: bench-snapshot
bench-snapshot: build
	benches/snapshot-rig --variant $(E2E_VARIANT)

## Create to first screenshot from a template's golden snapshot next to a cold boot (p50 of 10),
## and the host memory of 5 of each, in the rig.
.PHONY: bench-template
bench-template: build
	benches/snapshot-rig --bench template --variant $(E2E_VARIANT)

bench-agent:
	$(CARGO) bench -p deskd-agent --bench agent_bench

bench-api:
	$(CARGO) bench --bench api

## The live view's bytes/s and CPU on this host: Xvnc (the image's) next to x11vnc on Xvfb.
.PHONY: bench-vnc
bench-vnc:
	benches/vnc-host

## Guest networking's host side: set-up/teardown per computer, p50/p99 over 50 (root; no VM).
.PHONY: bench-network
bench-network:
	$(CARGO) bench --bench network

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Run deskd: on this host if it has hardware virtualization, otherwise inside the rig. Builds the
## default image first (or reuses it: images/build.sh keys it by its inputs). Prints the socket, the
## URL and the API key.
DESKD_RELEASE = $(or $(CARGO_TARGET_DIR),target)/release/deskd
run: build
	@img=$$(images/build.sh --variant $(VARIANT) --print-dir | tail -1) || exit 1; \
	if grep -qwE 'vmx|svm' /proc/cpuinfo; then \
		echo "make run: hardware virtualization present: running deskd serve here"; \
		images/install.sh "$$img" $(DATA_DIR) >/dev/null || exit 1; \
		$(DESKD_RELEASE) serve --data-dir $(DATA_DIR) --listen 127.0.0.1:8765 & pid=$$!; \
		for i in $$(seq 1 100); do [ -S /run/deskd/deskd.sock ] && break; sleep 0.1; done; \
		echo "  socket:  /run/deskd/deskd.sock"; \
		echo "  URL:     http://127.0.0.1:8765/api (and http://localhost/api over the socket)"; \
		if [ -f $(DATA_DIR)/initial-api-key ]; then echo "  API key: $$(cat $(DATA_DIR)/initial-api-key)"; \
		else echo "  API key: make one with: $(DESKD_RELEASE) keys create --name NAME --data-dir $(DATA_DIR)"; fi; \
		wait $$pid; \
	else \
		echo "make run: no vmx/svm on this host: running deskd inside the rig (tests/rig/README.md)"; \
		tests/rig/serve --deskd $(DESKD_RELEASE) --image "$$img"; \
	fi
