# The two commands a newcomer needs: `make up` and `make test` (see README.md).
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(PATH):/usr/local/go/bin:$(HOME)/.cargo/bin
DEV := target/debug/coredump-dev

.PHONY: up down test fmt-check lint msrv doc deny unit-and-integration controlplane build bench demo openapi

## Build the control plane (cached outside the repo) and the workspace's binaries; with
## REAL_NODE=1 also the node's (kubelet, kube-scheduler, kube-proxy, containerd, CoreDNS).
controlplane:
	@bash integration/controlplane/build.sh $(if $(filter-out 0,$(REAL_NODE)),--node) >/dev/null

build:
	$(CARGO) build --workspace --bins

## A local control plane with the add-on running in the background; REAL_NODE=1: a real
## node (kubelet, containerd, CNI) with the add-on installed from deploy/overlays/local;
## STORAGE=s3: the cores in a bucket of a local S3 server (versitygw) started with it.
up: controlplane build
	$(DEV) up $(if $(filter-out 0,$(REAL_NODE)),--real-node) $(if $(STORAGE),--storage=$(STORAGE))

## One real crash in pod demo/crasher, seen through to a Stored Coredump (needs `make up`).
demo: build
	$(DEV) demo

## Stop everything `make up` started.
down:
	@if [ -x $(DEV) ]; then $(DEV) down; else echo "nothing to stop"; fi

## fmt check, clippy (warnings are errors; the workspace lints), the declared MSRV
## against the dependencies', rustdoc (warnings are errors), cargo deny, unit and
## integration tests.
test: fmt-check lint msrv doc deny controlplane build unit-and-integration

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

msrv:
	python3 .ci/msrv.py

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --workspace --no-deps

## cargo deny against deny.toml (.ci/run installs cargo-deny): licences, duplicate crates
## and sources always, from the lock file alone. Advisories need the RustSec database, a
## git repository on a code host: checked when it can be fetched or one is already on
## disk, otherwise skipped with a message (this project's machines reach only the package
## registries).
DENY := $(CARGO) deny --offline --locked
ADVISORY_DBS := $(or $(CARGO_HOME),$(HOME)/.cargo)/advisory-dbs
deny:
	$(CARGO) fetch --locked
	$(DENY) check licenses bans sources
	@if $(CARGO) deny fetch db >/dev/null 2>&1 || ls -d $(ADVISORY_DBS)/*/.git >/dev/null 2>&1; then \
		$(DENY) check advisories; \
	else \
		echo "cargo deny: advisories not checked: the RustSec database cannot be fetched from here and none is in $(ADVISORY_DBS)"; \
	fi

unit-and-integration:
	$(CARGO) test --workspace

## Benchmarks against baselines of the same run (release build, root for the kernel
## parts); writes the tables into BENCHMARKS.md. See BENCHMARKS.md.
bench: controlplane
	$(CARGO) build --release --workspace --bins
	target/release/coredump-bench --write BENCHMARKS.md

## Regenerate the checked-in OpenAPI documents from the types.
openapi:
	UPDATE_OPENAPI=1 $(CARGO) test -p coredump-openapi generated_documents
