# Two entry points for a fresh machine:
#   make demo   set up, build, and generate + embed with the shared models (direct and daemon)
#   make test   set up and run the whole test suite (what CI runs): unit and integration tests,
#               then the package end to end on a real systemd, alone and as a fleet of three
#               machines behind HAProxy (needs root)

CARGO ?= cargo
include packaging/onnxruntime.env
export ORT_DYLIB_PATH ?= $(CURDIR)/.ort/libonnxruntime.so
export STEADYTEXT_MODEL_DIR ?= $(abspath $(CURDIR)/../shared/models)
DEMO_SOCKET := $(CURDIR)/target/demo.sock
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: setup build demo test test-cargo test-style test-fuzz test-e2e test-source-package test-manifests bench bench-engine bench-prefix-soak package-build install

setup:
	./packaging/dev-setup.sh

build: setup
	$(CARGO) build --release --locked

demo: build
	@echo '== direct mode: stctl generate'
	./target/release/stctl --no-daemon generate "Write a haiku about determinism." --max-new-tokens 48
	@echo '== direct mode: stctl embed (first 120 characters of the 384-float array)'
	./target/release/stctl --no-daemon embed "The same text gives the same vector." | cut -c1-120
	@echo '== daemon mode: steadytextd on $(DEMO_SOCKET)'
	@rm -f $(DEMO_SOCKET)
	@STATE_DIRECTORY=$(CURDIR)/target/demo-state ./target/release/steadytextd $(ROOT_FLAG) --listen unix:$(DEMO_SOCKET) >/dev/null 2>target/demo-daemon.log & echo $$! > target/demo.pid
	@for i in $$(seq 100); do [ -S $(DEMO_SOCKET) ] && break; sleep 0.1; done
	./target/release/stctl --socket unix:$(DEMO_SOCKET) --daemon-only generate "Write a haiku about determinism." --max-new-tokens 48
	./target/release/stctl --socket unix:$(DEMO_SOCKET) --daemon-only embed "The same text gives the same vector." | cut -c1-120
	./target/release/stctl --socket unix:$(DEMO_SOCKET) status
	@kill $$(cat target/demo.pid) && rm -f target/demo.pid

test: test-style test-manifests test-cargo test-fuzz test-e2e

# Kubernetes manifests rendered with kustomize and validated against the API schemas.
test-manifests:
	./packaging/kubernetes/check.sh

# Style gates: formatting, clippy (warnings are errors, missing docs included).
test-style:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --locked --all-targets -- -D warnings

# A short fuzz pass of the protocol decoder and the snapshot loader (longer, with AddressSanitizer
# watching the snapshot's unchecked archive access: FUZZ_SECS=600 FUZZ_SANITIZER=address). The
# short pass builds without a sanitizer (a third less build time: 10 -> 7 minutes here), and both targets are safe Rust
# but for that one access, made only after rkyv's validation of the same bytes.
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain build it.
# New inputs go to target/fuzz-corpus; fuzz/corpus (the seeds) is only read.
FUZZ_SECS ?= 20
FUZZ_SANITIZER ?= none
test-fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install --locked cargo-fuzz@0.13.2
	for t in protocol_line snapshot; do \
		mkdir -p target/fuzz-corpus/$$t && \
		RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run --sanitizer $(FUZZ_SANITIZER) --fuzz-dir fuzz $$t target/fuzz-corpus/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECS) -timeout=10 -print_final_stats=1 || exit 1; \
	done

test-cargo: setup
	$(CARGO) test --release --locked --lib --bins --tests

test-e2e: setup
	./tests/e2e-systemd.sh
	./tests/e2e-fleet.sh

# The Debian source package builds with no network, twice to the same bytes (needs root; two
# builds from scratch, ~13 minutes on 2 cores: not part of `make test`).
test-source-package:
	./tests/source-package.sh

# steadytextd through its socket against the anchors (Python onnxruntime, llama.cpp, fastembed)
# on the same work: one table, JSON in target/bench/compare.json. Not run by CI.
bench: build
	./bench/run.sh

# The prefix cache under a 10-minute run of 8 clients holding long conversations, its budget
# small enough that evictions never stop: RSS and the cache's bytes every 5 s (fails when the
# cache passes its budget or a request fails). CLIENTS, SECONDS and BUDGET change the run.
bench-prefix-soak: build
	mkdir -p target/bench && "$$(./tools/venv.sh bench/soak-requirements.txt)" bench/prefix_soak.py --bin target/release \
	    --fused "$$(./tools/fused-decoder/build.sh)/SmolLM2-135M-Instruct-fused-acc4" \
	    --clients $(or $(CLIENTS),8) --seconds $(or $(SECONDS),600) --budget-mb $(or $(BUDGET),128) \
	    --json target/bench/prefix-soak.json

# The engine's own figures (daemon round trip, concurrency, snapshots, long prompts).
bench-engine: setup
	$(CARGO) bench --locked --bench engine

# What the .deb (debian/rules) and the .rpm (rpm/steadytext.spec) both build and install.
# The packagers' C build flags (dpkg-buildflags, rpm's %set_build_flags) and SOURCE_DATE_EPOCH
# are dropped for cargo: ring's build script (cc) tracks them and would rebuild ring and all
# above it (2-3 minutes a package), while nothing built reads them (rustc embeds no date, ring's
# C no __DATE__). With them gone the packages ship the very binaries `make test` built and
# tested, reused without a rebuild.
PACKAGER_ENV := CFLAGS CXXFLAGS CPPFLAGS LDFLAGS FFLAGS FCFLAGS OBJCFLAGS OBJCXXFLAGS SOURCE_DATE_EPOCH
# From the upstream tarballs (packaging/source-package.sh; the .deb and the .rpm build from the
# same ones) vendor/ and onnxruntime/ lie beside the sources and the build uses no network: crates
# from vendor/ only, ONNX Runtime from onnxruntime/ (checked against its pinned sha256 by
# fetch-onnxruntime.sh), the build folder's path remapped so that two builds give the same bytes.
ifneq ($(wildcard vendor),)
OFFLINE_CARGO_HOME := $(CURDIR)/.cargo-home
OFFLINE_ENV := CARGO_HOME=$(OFFLINE_CARGO_HOME) CARGO_NET_OFFLINE=true \
	RUSTFLAGS=--remap-path-prefix=$(CURDIR)=/usr/src/steadytext \
	CFLAGS_x86_64_unknown_linux_gnu=-ffile-prefix-map=$(CURDIR)=/usr/src/steadytext
endif
package-build:
ifneq ($(wildcard vendor),)
	mkdir -p $(OFFLINE_CARGO_HOME) .ort
	printf '[source.crates-io]\nreplace-with = "vendored"\n[source.vendored]\ndirectory = "$(CURDIR)/vendor"\n' > $(OFFLINE_CARGO_HOME)/config.toml
	cp onnxruntime/libonnxruntime.so.* .ort/
endif
	./packaging/fetch-onnxruntime.sh
	env $(PACKAGER_ENV:%=-u %) $(OFFLINE_ENV) $(CARGO) build --release --locked --bins
	mkdir -p target/completions
	./target/release/stctl completions bash > target/completions/stctl
	./target/release/stctl completions zsh > target/completions/_stctl
	./target/release/stctl completions fish > target/completions/stctl.fish

DESTDIR ?=
PREFIX ?= /usr
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
USERUNITDIR ?= $(PREFIX)/lib/systemd/user
ZSH_COMPLETIONS ?= $(PREFIX)/share/zsh/vendor-completions
DOCDIR ?= $(PREFIX)/share/doc/steadytext
install:
	install -D -m 0755 target/release/steadytextd $(DESTDIR)$(PREFIX)/bin/steadytextd
	install -D -m 0755 target/release/stctl $(DESTDIR)$(PREFIX)/bin/stctl
	install -D -m 0644 .ort/libonnxruntime.so.$(ORT_VERSION) $(DESTDIR)$(PREFIX)/lib/steadytext/libonnxruntime.so.$(ORT_VERSION)
	install -D -m 0644 -t $(DESTDIR)$(UNITDIR) systemd/steadytext.socket systemd/steadytext-tcp.socket systemd/steadytext-http.socket systemd/steadytext-ollama.socket systemd/steadytext-zmq.socket systemd/steadytext.service
	install -D -m 0644 -t $(DESTDIR)$(USERUNITDIR) systemd/user/steadytext.socket systemd/user/steadytext.service
	install -D -m 0644 packaging/steadytext.toml $(DESTDIR)$(SYSCONFDIR)/steadytext/steadytext.toml
	install -D -m 0644 man/stctl.1 $(DESTDIR)$(PREFIX)/share/man/man1/stctl.1
	install -D -m 0644 man/steadytextd.8 $(DESTDIR)$(PREFIX)/share/man/man8/steadytextd.8
	install -D -m 0644 man/steadytext.toml.5 $(DESTDIR)$(PREFIX)/share/man/man5/steadytext.toml.5
	install -D -m 0644 target/completions/stctl $(DESTDIR)$(PREFIX)/share/bash-completion/completions/stctl
	install -D -m 0644 target/completions/_stctl $(DESTDIR)$(ZSH_COMPLETIONS)/_stctl
	install -D -m 0644 target/completions/stctl.fish $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/stctl.fish
	install -D -m 0644 -t $(DESTDIR)$(DOCDIR) docs/protocol.md docs/http.md docs/compat.md systemd/steadytext.service.d/cuda.conf.example systemd/steadytext.service.d/tcp.conf.example README.md
