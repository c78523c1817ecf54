# submitd — build, run, test.
#   make            build build/submitd and the tools (build/submitctl)
#   make run        install deps, build, make a demo under ./run, serve it
#   make test       install deps, build, unit + integration tests, then the
#                   same suite on the ASan+UBSan build
#   make SAN=1      sanitizer build into build-san/
#   make fuzz       run the libFuzzer harnesses for a while (clang)
#   make clang-check  the same build with clang -Werror into build-clang/

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

PKGS = libevent libevent_openssl libevent_pthreads openssl
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

.PHONY: all run test unit integration test-san clean deps deps-test fuzz fuzz-smoke clang-check bench

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

integration: all
	SUBMITD_BUILD=$(abspath $(BUILD)) $(PYTEST) tests/integration

PYTEST = $(PYTHON) -m pytest -q -p no:cacheprovider --durations=8

test: deps-test
	$(MAKE) all unit
	$(MAKE) clang-check
	$(MAKE) integration
	$(MAKE) fuzz-smoke
	$(MAKE) SAN=1 test-san

clang-check:
	$(MAKE) CC=clang BUILD=build-clang all

test-san: all $(UNIT_BINS)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t (asan+ubsan)"; $$t; done
	SUBMITD_BUILD=$(abspath $(BUILD)) SUBMITD_SAN=1 $(PYTEST) tests/integration

fuzz:
	$(MAKE) -C tests/fuzz run

fuzz-smoke:
	$(MAKE) -C tests/fuzz smoke

clean:
	rm -rf build build-san build-clang

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
