# Two entry points for a fresh machine:
#   make demo   set up, build, and generate + embed with the shared models (direct and daemon)
#   make test   set up and run the whole test suite (what CI runs): unit and integration tests,
#               then the package end to end on a real systemd (needs root)

CARGO ?= cargo
export ORT_DYLIB_PATH ?= $(CURDIR)/.ort/libonnxruntime.so.1.31.1
export STEADYTEXT_MODEL_DIR ?= $(abspath $(CURDIR)/../shared/models)
DEMO_SOCKET := $(CURDIR)/target/demo.sock
ROOT_FLAG := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: setup build demo test test-cargo test-e2e bench

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

test: test-cargo test-e2e

test-cargo: setup
	$(CARGO) test --release --locked --lib --bins --tests

test-e2e: setup
	./tests/e2e-systemd.sh

bench: setup
	$(CARGO) bench --locked --bench engine
