# deskd: the two set-up commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
CARGO ?= cargo

.PHONY: bench-agent bench-api
.PHONY: all build build-debug test unit e2e rig-self-test bench run deps lint image image-boot-test

all: build

build:
	$(CARGO) build --release --workspace

build-debug:
	$(CARGO) build --workspace

## Every test: unit and integration tests, then the end-to-end tests in the rig.
test: unit e2e

## Unit tests, agent tests against Xvfb, API tests against a daemon on a temporary socket.
unit:
	$(CARGO) test --workspace

## End-to-end tests: they need real KVM, which the rig provides on hosts without it.
e2e: build-debug rig-self-test vmm-e2e

## deskd's VMM boots Debian's cloud kernel: disk, vsock, reboot, poweroff, power button (issue 6).
.PHONY: vmm-e2e
vmm-e2e:
	tests/vmm/e2e

## deskd's VMM against QEMU -M microvm in the rig: boot to userspace, VMM memory (issue 6).
.PHONY: bench-vmm
bench: bench-vmm
bench-vmm: build
	benches/vmm-boot

rig-self-test:
	tests/rig/run --self-test

## The default guest image system/desktop, built from Debian packages and installed into
## $(DATA_DIR)/images/ (images/README.md). VARIANT=minimal: the same without the browser.
VARIANT ?= desktop
DATA_DIR ?= /var/lib/deskd
image:
	images/build.sh --variant $(VARIANT) --install $(DATA_DIR)

## Boots the image (in the rig where needed): agent /health, Xvfb resolutions, desktop screenshot.
image-boot-test:
	tests/image/boot-test --variant $(VARIANT)

## Benchmarks: each prints its figures next to what they were compared with in the same run.
bench: bench-agent bench-api

bench-agent:
	$(CARGO) bench -p deskd-agent --bench agent_bench

bench-api:
	$(CARGO) bench --bench api

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Run deskd: on this host if it has hardware virtualization, otherwise inside the rig.
run: build
	@if grep -qwE 'vmx|svm' /proc/cpuinfo; then \
		echo "make run: hardware virtualization present: running deskd serve here"; \
		target/release/deskd serve; \
	else \
		echo "make run: no vmx/svm on this host: running deskd inside the rig (tests/rig/README.md)"; \
		tests/rig/serve --deskd target/release/deskd; \
	fi
