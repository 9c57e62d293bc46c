# uloop: a userspace loopback for Linux.
#
# Everything is built as the user who runs make; only the steps that need
# root (TUN devices, namespaces, routing, apt-get) run as root: through sudo
# from an ordinary user's shell, directly when make itself runs as root (CI,
# a container without sudo). Nothing in the checkout is then owned by root.
# "sudo make ..." is not needed, and usually fails: sudo resets PATH to its
# secure_path, which does not hold a Go installed in /usr/local/go/bin.
GO      ?= go
BIN     := bin
PKGS    := ./...

ifeq ($(shell id -u),0)
SUDO :=
else
SUDO := sudo
endif

# How go test runs the test binaries when make is not root: as root through
# sudo, with go's own bin directory on PATH (as go test gives it), since the
# namespace tests build uloopd themselves, and root's usual directories for
# ip, sysctl and the rest. Root tests skip when not root; built as the user.
ROOT_PATH := $(shell $(GO) env GOROOT 2>/dev/null)/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
TEST_EXEC := $(if $(SUDO),-exec 'sudo env PATH=$(ROOT_PATH)')

.PHONY: all build install test unit-test fuzz conformance bench demo soak clean vet deps sudo-ok

all: build

# CGO_ENABLED=0: uloopd drops capabilities on all threads with
# syscall.AllThreadsSyscall, which a cgo binary cannot do, and uloop run
# clears the ones its command could inherit the same way.
build:
	CGO_ENABLED=0 $(GO) build -o $(BIN)/uloopd ./cmd/uloopd
	CGO_ENABLED=0 $(GO) build -o $(BIN)/uloop ./cmd/uloop
	$(GO) build -o $(BIN)/uloop-bench ./cmd/uloop-bench

# Installs uloopd and uloop into $(DESTDIR)$(PREFIX)/bin and the systemd unit
# (dist/uloopd.service, pointed at those binaries) into $(DESTDIR)$(UNITDIR).
# Through sudo when not root and no DESTDIR is given.
PREFIX  ?= /usr/local
UNITDIR ?= /etc/systemd/system
INSTALL_SUDO := $(if $(DESTDIR),,$(SUDO))
install: build
	$(INSTALL_SUDO) install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(UNITDIR)
	$(INSTALL_SUDO) install -m 0755 $(BIN)/uloopd $(BIN)/uloop $(DESTDIR)$(PREFIX)/bin/
	sed 's|/usr/local/bin/|$(PREFIX)/bin/|g' dist/uloopd.service | $(INSTALL_SUDO) tee $(DESTDIR)$(UNITDIR)/uloopd.service >/dev/null

vet:
	$(GO) vet $(PKGS)
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); exit 1; }

# Asks for the sudo password once, up front, instead of in the middle of
# parallel test output. No-op as root.
sudo-ok:
	@$(if $(SUDO),sudo true)

# Installs the tools the namespace tests drive (iperf3, ping, ...) when missing,
# then runs every test, the namespace tests as root, and the fuzz target for a
# short fixed time (as the user: it needs no root). TESTFLAGS adds go test
# flags, e.g. make test PKGS=./integration/ TESTFLAGS="-run 'TestHostState'".
# -p 1: one package's tests at a time. The benchmark harness's own test
# runs iperf3, and the impairment tests measure delays to within 10%; on a
# 2-core machine the one would skew the other's timers (seen: 46.5 ms for a
# 40 ms round-trip delay while both ran).
test: deps build vet sudo-ok
	$(GO) test -p 1 -count=1 -timeout 40m $(TEST_EXEC) $(TESTFLAGS) $(PKGS)
	$(MAKE) fuzz

FUZZTIME ?= 20s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzInbound -fuzztime $(FUZZTIME) ./stack/

# The Go toolchain's own net, net/http and net/rpc tests (-short), on kernel
# lo and through uloopd; fails on any outcome that differs beyond those
# documented in docs/semantics.md. Also part of make test.
conformance: deps build sudo-ok
	$(GO) test -count=1 -v $(TEST_EXEC) -run '^TestGoNetConformance$$' ./integration/

unit-test:
	$(GO) test -count=1 ./tundev/... ./stack/... ./route/... ./cmd/uloop/

# The harness writes its report into bench-out/ (--out) as root; it is given
# back to the user.
bench: deps build
	$(SUDO) $(BIN)/uloop-bench $(BENCHFLAGS)
	@$(if $(SUDO),[ ! -d bench-out ] || sudo chown -R $$(id -u):$$(id -g) bench-out)

demo: deps build
	$(SUDO) ./scripts/demo.sh

# SOAK_DURATION (default 30m): iperf3 TCP and UDP plus connection churn.
# sudo drops the environment, so the script's settings are passed on.
SOAK_ENV := $(foreach v,SOAK_DURATION SOAK_INTERVAL SOAK_IPERF_SECONDS SOAK_UDP_RATE SOAK_CHURN_RATE ULOOPD,$(v)=$($(v)))
soak: deps build
	$(SUDO) env $(SOAK_ENV) ./scripts/soak.sh

deps:
	@./scripts/deps.sh

clean:
	rm -rf $(BIN)
