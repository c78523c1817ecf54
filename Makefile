# submitd — build, run, test.
#   make            build build/submitd and the tools (build/submitctl)
#   make run        install deps, build, make a demo under ./run, serve it
#   make test       install deps, build, unit + integration tests, then the
#                   same suite on the ASan+UBSan build
#   make SAN=1      sanitizer build into build-san/
#   make fuzz       run the libFuzzer harnesses for a while (clang)
#   make clang-check  the same build with clang -Werror into build-clang/
#   make valgrind   integration tests with the daemon under valgrind memcheck
#   make bench      submitd vs Postfix and Haraka (docs/performance.md)

CC ?= cc
ifeq ($(CC),cc)
CC := gcc
endif
PYTHON ?= /usr/bin/python3

ifeq ($(SAN),1)
BUILD ?= build-san
SANFLAGS = -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
OPT = -O1 -g
else
BUILD ?= build
SANFLAGS =
OPT = -O2 -g
endif

PKGS = libevent libevent_openssl libevent_pthreads openssl libcares hiredis libsodium
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

CFLAGS ?= $(OPT)
CFLAGS += -std=c17 -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter -D_GNU_SOURCE -pthread \
          -Isrc $(PKG_CFLAGS) $(SANFLAGS) -MMD -MP
LDFLAGS += -pthread $(SANFLAGS)
LIBS = $(PKG_LIBS) -lcrypt -largon2

LIB_SRCS := $(filter-out src/main.c,$(wildcard src/*/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
LIB := $(BUILD)/libsubmitd.a

TOOLS := $(patsubst tools/%.c,$(BUILD)/%,$(wildcard tools/*.c))
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRCS))
BENCH_BINS := $(BUILD)/bench/loadgen $(BUILD)/bench/sink

.PHONY: all run test unit integration test-san clean deps deps-test fuzz fuzz-smoke soak clang-check bench bench-build valgrind valgrind-smoke

all: $(BUILD)/submitd $(TOOLS)

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/submitd: $(BUILD)/obj/src/main.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/%: $(BUILD)/obj/tools/%.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS) -lcmocka

deps:
	@scripts/deps.sh build

deps-test:
	@scripts/deps.sh test

run: deps
	$(MAKE) all
	scripts/demo.sh

unit: $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done

integration: all $(BENCH_BINS)
	SUBMITD_BUILD=$(abspath $(BUILD)) $(PYTEST) tests/integration

PYTEST = $(PYTHON) -m pytest -q -p no:cacheprovider --durations=8

test: deps-test
	$(MAKE) all unit
	$(MAKE) clang-check
	$(MAKE) integration
	$(MAKE) valgrind-smoke
	$(MAKE) fuzz-smoke
	$(MAKE) SAN=1 test-san

clang-check:
	$(MAKE) CC=clang BUILD=build-clang all

test-san: all $(UNIT_BINS) $(BENCH_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t (asan+ubsan)"; $$t; done
	SUBMITD_BUILD=$(abspath $(BUILD)) SUBMITD_SAN=1 $(PYTEST) tests/integration

# The daemon under valgrind memcheck (leaks, invalid accesses) for a set of
# integration tests; `make test` runs the short list, `make valgrind` more.
VALGRIND_TESTS ?= tests/integration/test_clients.py tests/integration/test_protocol.py \
                  tests/integration/test_tls.py
VALGRIND_SMOKE = tests/integration/test_clients.py

valgrind: all
	SUBMITD_BUILD=$(abspath $(BUILD)) SUBMITD_VALGRIND=1 $(PYTEST) $(VALGRIND_TESTS)

valgrind-smoke: all
	SUBMITD_BUILD=$(abspath $(BUILD)) SUBMITD_VALGRIND=1 $(PYTEST) $(VALGRIND_SMOKE)

# Benchmark (issue 7, docs/performance.md): bench/loadgen and bench/sink
# into $(BUILD)/bench/ (not part of `all`); bench/run.sh installs Postfix and
# Haraka when missing, runs every scenario against them and submitd, and
# rewrites docs/performance.md. BENCH_SECONDS=N per run (default 8).
# The integration suite smoke-tests both tools (test_bench_tools.py).

$(BUILD)/bench/%: $(BUILD)/obj/bench/%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

bench-build: all $(BENCH_BINS)

bench: bench-build
	BUILD=$(abspath $(BUILD)) bench/run.sh
	@if grep -q '^bench-limiter:' Makefile; then $(MAKE) bench-limiter; fi

# bench-limiter (issue 5): ns per check of the in-memory rate limiter at 1k,
# 100k and 1M keys (bench/ratelimit_bench.c); `make bench` runs it too.
.PHONY: bench-limiter
bench-limiter: $(BUILD)/bench/ratelimit_bench
	$(BUILD)/bench/ratelimit_bench

fuzz:
	$(MAKE) -C tests/fuzz run

# Soak (tests/integration/test_soak.py): the daemon under rounds of load
# relayed to bench/sink for SOAK_SECONDS, then every queued message at the
# sink once, an empty queue, no error lines, bounded memory growth. The
# integration suite runs it for 6 seconds; `make SAN=1 soak` soaks the
# ASan build.
SOAK_SECONDS ?= 600
soak: all $(BENCH_BINS)
	SUBMITD_SOAK_SECONDS=$(SOAK_SECONDS) SUBMITD_BUILD=$(abspath $(BUILD)) $(if $(filter 1,$(SAN)),SUBMITD_SAN=1) \
		$(PYTEST) -s tests/integration/test_soak.py

fuzz-smoke:
	$(MAKE) -C tests/fuzz smoke

clean:
	rm -rf build build-san build-clang

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
