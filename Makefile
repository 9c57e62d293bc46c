# uloop: a userspace loopback for Linux. Targets that touch the network need root.
GO      ?= go
BIN     := bin
PKGS    := ./...

.PHONY: all build test unit-test bench demo soak clean vet fmt

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
# then runs every test. As root the namespace tests run; otherwise they skip.
test: deps build vet
	$(GO) test -count=1 -timeout 40m $(PKGS)

unit-test:
	$(GO) test -count=1 ./tundev/... ./stack/... ./route/...

bench: deps build
	$(BIN)/uloop-bench $(BENCHFLAGS)

demo: deps build
	./scripts/demo.sh

deps:
	@./scripts/deps.sh

clean:
	rm -rf $(BIN)
