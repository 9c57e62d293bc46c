# uloop: a userspace loopback for Linux. Targets that touch the network need root.
GO      ?= go
BIN     := bin
PKGS    := ./...

.PHONY: all build test unit-test fuzz conformance bench demo soak clean vet deps

all: build

# CGO_ENABLED=0: uloopd drops capabilities on all threads with
# syscall.AllThreadsSyscall, which a cgo binary cannot do.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/uloopd ./cmd/uloopd
	$(GO) build -o $(BIN)/uloop-bench ./cmd/uloop-bench

vet:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }

# Installs the tools the namespace tests drive (iperf3, ping, ...) when missing,
# then runs every test, and the fuzz target for a short fixed time. As root
# the namespace tests run; otherwise they skip.
test: deps build vet
	$(GO) test -count=1 -timeout 40m $(PKGS)
	$(MAKE) fuzz

FUZZTIME ?= 20s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzInbound -fuzztime $(FUZZTIME) ./stack/

# The Go toolchain's own net, net/http and net/rpc tests (-short), on kernel
# lo and through uloopd; fails on any outcome that differs beyond those
# documented in docs/semantics.md. Also part of make test.
conformance: build
	$(GO) test -count=1 -v -run '^TestGoNetConformance$$' ./integration/

unit-test:
	$(GO) test -count=1 ./tundev/... ./stack/... ./route/...

bench: deps build
	$(BIN)/uloop-bench $(BENCHFLAGS)

demo: deps build
	./scripts/demo.sh

# SOAK_DURATION (default 30m): iperf3 TCP and UDP plus connection churn.
soak: deps build
	./scripts/soak.sh

deps:
	@./scripts/deps.sh

clean:
	rm -rf $(BIN)
