# sxm — Storage XenMotion toolkit.  See README.md.
#
#   make              build everything (in-tree outputs, usable without install)
#   make check        run every test through prove (TAP)
#   make check-asan   the same suite, built with ASan + UBSan
#   make demo         the main job on a built-in default
#   make crash-explore  the crash-state exploration at full size (CRASH_STATES, CRASH_OPS)
#   make soak         8 VMs evacuated A -> B at once, then SOAK_ROUNDS (100) migrations of one VM, resources flat
#   make check-xen    only tests/xen.t: Xen 4.17 under QEMU/TCG, xl vs xenmem (in check too)
#   make xen-flake    tests/xen.t RUNS times (default 10): the rig's flake rate
#   make bench        benchmarks against qemu-nbd / nbdcopy (printed, not asserted)
#   make fuzz         libFuzzer harnesses, FUZZ_SECONDS each (default 60)
#   make install      PREFIX=/usr/local DESTDIR= ; the plugin goes to nbdkit's plugindir
#   make deb          sxm_VERSION_amd64.deb (debhelper, dpkg-buildpackage -b)

VERSION   := 0.1.0
PREFIX    ?= /usr/local
BINDIR    ?= $(PREFIX)/bin
MANDIR    ?= $(PREFIX)/share/man
CC        ?= gcc
CFLAGS    ?= -O2 -g
# make check-asan builds with these (see the check-asan target).  They must
# be set before ALLCFLAGS, which is expanded immediately.
ifeq ($(SANITIZE),1)
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all
endif
WARNFLAGS := -Wall -Wextra -Werror -Wno-unused-parameter
ALLCFLAGS := $(WARNFLAGS) -std=gnu11 -fPIC -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 \
             -DSXM_VERSION='"$(VERSION)"' -Icommon $(SANFLAGS) $(CFLAGS)
ALLLDFLAGS := $(SANFLAGS) $(LDFLAGS)


PLUGINDIR  = $(shell pkg-config --variable=plugindir nbdkit 2>/dev/null)
FILTERDIR  = $(shell pkg-config --variable=filterdir nbdkit 2>/dev/null)
NBDKIT_CFLAGS = $(shell pkg-config --cflags nbdkit 2>/dev/null)

COMMON_SRCS := common/vhd.c common/vhd-create.c common/vhd-write.c common/vhd-check.c common/vhd-coalesce.c common/vhd-resize.c common/vhd-xen.c common/vhd-repair.c common/vhd-setparent.c common/bitmap.c common/log.c common/rangelock.c common/size.c \
               common/jsonline.c common/nbdpolicy.c common/nbdconnect.c common/mirrorctl.c \
               common/fullio.c common/unixsock.c common/ctlsock.c
COMMON_OBJS := $(COMMON_SRCS:.c=.o)
COMMON_HDRS := $(wildcard common/*.h)

PLUGIN     := nbdkit-plugin/nbdkit-vhd-plugin.so
FILTER     := nbdkit-plugin/nbdkit-mirror-filter.so
FILTER_SRCS := nbdkit-plugin/mirror.c nbdkit-plugin/mirror-state.c nbdkit-plugin/mirror-write.c \
               nbdkit-plugin/mirror-copy.c nbdkit-plugin/mirror-cmd.c \
               nbdkit-plugin/mirror-dest.c nbdkit-plugin/mirror-control.c
TOOLS      := client/sxm-vhd client/sxm-copy client/sxm-mirror xenmem/xenmem
BENCH_BINS := bench/map-time
XEN_TEST_BINS := tests/xen/downtime-probe
CRASH_BINS := tests/crash/crashtrace.so tests/crash/nbdkit-crashlog-filter.so tests/crash/crash-read
FUZZERS    := tests/fuzz/fuzz-vhd-open tests/fuzz/fuzz-vhd-write tests/fuzz/fuzz-jsonline tests/fuzz/fuzz-xmstream
FUZZ_SECONDS ?= 60
UNIT_TESTS := $(patsubst %.c,%,$(wildcard tests/unit/test-*.c))

.PHONY: all tools deb deps check check-asan check-xen xen-flake crash-explore soak demo bench fuzz install clean
all: deps $(PLUGIN) $(FILTER) $(TOOLS) $(UNIT_TESTS) $(BENCH_BINS) $(FUZZERS) $(XEN_TEST_BINS) $(CRASH_BINS)

# Installs (as root) whatever Debian packages are missing; a no-op otherwise.
# SXM_NO_DEPS=1 skips it (a package build: Build-Depends did that).
deps:
	@[ -n "$(SXM_NO_DEPS)" ] || scripts/install-deps

# What is installed: the plugin, the filter and the tools.
tools: deps $(PLUGIN) $(FILTER) $(TOOLS)

common/libsxm.a: $(COMMON_OBJS)
	rm -f $@
	ar rcs $@ $^

common/%.o: common/%.c $(COMMON_HDRS) | deps
	$(CC) $(ALLCFLAGS) -c -o $@ $<

PLUGIN_SRCS := nbdkit-plugin/vhd.c nbdkit-plugin/vhd-live.c
$(PLUGIN): $(PLUGIN_SRCS) nbdkit-plugin/vhd-plugin.h common/libsxm.a $(COMMON_HDRS) | deps
	$(CC) $(ALLCFLAGS) $(NBDKIT_CFLAGS) -shared -o $@ $(PLUGIN_SRCS) common/libsxm.a $(ALLLDFLAGS) -lpthread

$(FILTER): $(FILTER_SRCS) nbdkit-plugin/mirror.h common/libsxm.a $(COMMON_HDRS) | deps
	$(CC) $(ALLCFLAGS) $(NBDKIT_CFLAGS) -shared -o $@ $(FILTER_SRCS) common/libsxm.a \
	  $(ALLLDFLAGS) $(shell pkg-config --libs libnbd) -lpthread

client/sxm-vhd: LDLIBS += -luuid

# xenmem: the engine, stream, transport and backends in an archive that the
# tool and its unit tests link; the command line (option parsing, the send
# path, the VM monitor) only in the tool.  The uffd guest's disks are
# libnbd handles.
XENMEM_SRCS := xenmem/engine.c xenmem/stream.c xenmem/transport.c \
               xenmem/backend-uffd.c xenmem/backend-xen.c \
               xenmem/backend-none.c xenmem/vbd.c xenmem/preflight.c \
               xenmem/xen-checks.c
XENMEM_CLI_SRCS := xenmem/xenmem.c xenmem/cli.c xenmem/monitor.c
XENMEM_OBJS := $(XENMEM_SRCS:.c=.o)
XENMEM_HDRS := $(wildcard xenmem/*.h)
XENMEM_LIBS := $(shell pkg-config --libs gnutls 2>/dev/null) $(shell pkg-config --libs libnbd 2>/dev/null) \
               -lxenlight -lxenguest -lxenctrl -lxentoollog -lpthread
xenmem/%.o: xenmem/%.c $(XENMEM_HDRS) $(COMMON_HDRS) | deps
	$(CC) $(ALLCFLAGS) -Ixenmem -c -o $@ $<
xenmem/libxenmem.a: $(XENMEM_OBJS)
	rm -f $@
	ar rcs $@ $^
xenmem/xenmem: $(XENMEM_CLI_SRCS) xenmem/libxenmem.a common/libsxm.a $(XENMEM_HDRS) | deps
	$(CC) $(ALLCFLAGS) -Ixenmem -o $@ $(XENMEM_CLI_SRCS) xenmem/libxenmem.a common/libsxm.a \
	  $(ALLLDFLAGS) $(XENMEM_LIBS)
tests/unit/test-xm%: tests/unit/test-xm%.c tests/unit/tap.h xenmem/libxenmem.a common/libsxm.a $(XENMEM_HDRS)
	$(CC) $(ALLCFLAGS) -Ixenmem -o $@ $< xenmem/libxenmem.a common/libsxm.a \
	  $(ALLLDFLAGS) $(XENMEM_LIBS)

COPY_SRCS := $(wildcard client/copy/*.c)
client/sxm-copy: client/sxm-copy.c $(COPY_SRCS) client/copy/copy.h common/libsxm.a $(COMMON_HDRS) | deps
	$(CC) $(ALLCFLAGS) -o $@ client/sxm-copy.c $(COPY_SRCS) common/libsxm.a \
	  $(ALLLDFLAGS) $(shell pkg-config --libs libnbd) -lpthread

client/%: client/%.c common/libsxm.a $(COMMON_HDRS)
	$(CC) $(ALLCFLAGS) -o $@ $< common/libsxm.a $(ALLLDFLAGS) $(LDLIBS)

bench/%: bench/%.c common/libsxm.a $(COMMON_HDRS)
	$(CC) $(ALLCFLAGS) -o $@ $< common/libsxm.a $(ALLLDFLAGS)

tests/unit/test-%: tests/unit/test-%.c tests/unit/tap.h common/libsxm.a $(COMMON_HDRS)
	$(CC) $(ALLCFLAGS) -o $@ $< common/libsxm.a -lpthread $(ALLLDFLAGS)

# libFuzzer harnesses: clang, ASan+UBSan, the common/ sources compiled in.
# (The harnesses are built from the sources with the fuzzer's
# instrumentation; the libnbd glue is not fuzzed and not linked.)
FUZZ_SRCS := $(filter-out common/nbdconnect.c,$(COMMON_SRCS))
tests/fuzz/fuzz-%: tests/fuzz/fuzz-%.c tests/fuzz/fuzzvhd.h $(FUZZ_SRCS) $(COMMON_HDRS) | deps
	clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
	  -std=gnu11 -D_GNU_SOURCE -D_FILE_OFFSET_BITS=64 -Icommon \
	  -o $@ $< $(FUZZ_SRCS) -lpthread

tests/fuzz/fuzz-xmstream: xenmem/stream.c xenmem/stream.h xenmem/preflight.c xenmem/preflight.h

# Crash-state exploration (tests/crash/, doc/testing.md): the interposer
# and the filter are test instrumentation, built without the sanitizers
# (the interposer is preloaded into processes that may not carry them).
tests/crash/crashtrace.so: tests/crash/crashtrace.c tests/crash/crashtrace.h | deps
	$(CC) $(WARNFLAGS) -std=gnu11 -fPIC -D_GNU_SOURCE -O2 -g -shared -o $@ $< -ldl
tests/crash/nbdkit-crashlog-filter.so: tests/crash/nbdkit-crashlog-filter.c tests/crash/crashtrace.h | deps
	$(CC) $(WARNFLAGS) -std=gnu11 -fPIC -D_GNU_SOURCE -O2 -g $(NBDKIT_CFLAGS) -shared -o $@ $<
tests/crash/crash-read: tests/crash/crash-read.c common/libsxm.a $(COMMON_HDRS)
	$(CC) $(ALLCFLAGS) -o $@ $< common/libsxm.a $(ALLLDFLAGS) -lpthread

# The Xen test's blackout probe (runs in the rig's dom0).
tests/xen/downtime-probe: tests/xen/downtime-probe.c common/monotime.h | deps
	$(CC) $(ALLCFLAGS) -o $@ $< -lxenctrl

# make fuzz FUZZ_SECONDS=N: each harness for N seconds from generated seeds.
fuzz: all
	rm -rf tests/fuzz/work && mkdir -p tests/fuzz/work/corpus
	/usr/bin/python3 tests/fuzz/make-seeds.py tests/fuzz/work/seeds
	tests/fuzz/fuzz-vhd-open -max_total_time=$(FUZZ_SECONDS) -max_len=262144 \
	  -rss_limit_mb=2048 -print_final_stats=1 \
	  tests/fuzz/work/corpus tests/fuzz/work/seeds
	mkdir -p tests/fuzz/work/write-corpus
	/usr/bin/python3 tests/fuzz/make-write-seeds.py tests/fuzz/work/seeds tests/fuzz/work/write-seeds
	tests/fuzz/fuzz-vhd-write -max_total_time=$(FUZZ_SECONDS) -max_len=262144 \
	  -rss_limit_mb=2048 -print_final_stats=1 \
	  tests/fuzz/work/write-corpus tests/fuzz/work/write-seeds
	mkdir -p tests/fuzz/work/json-corpus
	tests/fuzz/fuzz-jsonline -max_total_time=$(FUZZ_SECONDS) -max_len=4096 \
	  -rss_limit_mb=2048 -print_final_stats=1 \
	  -dict=tests/fuzz/jsonline.dict tests/fuzz/work/json-corpus tests/fuzz/jsonline-seeds
	mkdir -p tests/fuzz/work/xm-corpus
	/usr/bin/python3 tests/fuzz/make-xmstream-seeds.py tests/fuzz/work/xm-seeds
	tests/fuzz/fuzz-xmstream -max_total_time=$(FUZZ_SECONDS) -max_len=65536 \
	  -rss_limit_mb=2048 -print_final_stats=1 \
	  tests/fuzz/work/xm-corpus tests/fuzz/work/xm-seeds

TESTS ?= $(UNIT_TESTS) $(sort $(wildcard tests/*.t))
# tests/xen.t (the Xen rig, ~8-12 min, mostly one QEMU/TCG thread) runs
# beside the others, which run one at a time: on 2 cores the suite takes
# about as long as its longer half instead of the sum.
CHECK_RULES = --rules='par=tests/xen.t' --rules='seq=**'
check: all
	prove -j2 $(CHECK_RULES) --exec '' $(TESTS)

# The same suite under ASan+UBSan.  Objects are rebuilt with the sanitizers,
# and rebuilt plain afterwards so that the tree is left as 'make' makes it.
# nbdkit itself is not instrumented, so the tests preload the runtime into it.
check-asan: deps
	$(MAKE) clean
	$(MAKE) SANITIZE=1 all
	SXM_ASAN=1 ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
	  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
	  prove --exec '' $(TESTS); rc=$$?; $(MAKE) clean; exit $$rc

demo: deps $(PLUGIN) $(FILTER) $(TOOLS)
	scripts/demo

# The crash-state exploration of tests/crash-explore.t (a bounded sample
# of it runs in make check) at full size: CRASH_STATES states per
# workload, CRASH_OPS requests each; CRASH_SEED replays a run.
CRASH_STATES ?= 2000
CRASH_OPS ?= 200
crash-explore: all
	CRASH_STATES=$(CRASH_STATES) CRASH_OPS=$(CRASH_OPS) prove -v --exec '' tests/crash-explore.t

# Not in make check (tens of minutes): tests/soak/evacuate (8 running VMs
# migrated at once, against one alone) and tests/soak/soak (SOAK_ROUNDS
# migrations of one VM A -> B -> A ..., RSS/fds/threads sampled and held
# flat, nothing left behind).  Figures in doc/testing.md.
SOAK_ROUNDS ?= 100
soak: all
	SOAK_ROUNDS=$(SOAK_ROUNDS) prove -v --exec '' tests/soak/evacuate tests/soak/soak

# Only the Xen test (also part of make check): a real Xen 4.17 under
# QEMU/TCG, xl migrate and xenmem's xen backend side by side (tests/xen.t;
# the rig is built once, ~4 min, and cached in /var/tmp/sxm-xen-rig).
check-xen: all
	prove --exec '' tests/xen.t

# The rig's flake rate: tests/xen.t RUNS times in a row, a line per run.
RUNS ?= 10
xen-flake: all
	tests/xen/flake-rate $(RUNS)

bench: all
	bench/vhd-read.sh
	bench/vhd-write.sh
	bench/copy.sh
	bench/copy-vhd.sh
	bench/mirror.sh
	bench/xenmem.sh
	bench/migrate.sh
	bench/backup.sh
	bench/front.sh

install: tools
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(PLUGINDIR) $(DESTDIR)$(MANDIR)/man1
	install -m 755 $(TOOLS) $(DESTDIR)$(BINDIR)/
	install -m 755 scripts/sxm $(DESTDIR)$(BINDIR)/sxm
	# sxm finds its Xen hotplug script at BINDIR/../lib/sxm.
	install -d $(DESTDIR)$(BINDIR)/../lib/sxm
	install -m 755 scripts/block-sxm $(DESTDIR)$(BINDIR)/../lib/sxm/block-sxm
	install -m 755 $(PLUGIN) $(DESTDIR)$(PLUGINDIR)/
	install -d $(DESTDIR)$(FILTERDIR)
	install -m 755 $(FILTER) $(DESTDIR)$(FILTERDIR)/
	for p in doc/*.pod; do \
	  n=$$(basename $$p .pod); \
	  pod2man --section=1 --center=sxm --release=$(VERSION) $$p \
	    > $(DESTDIR)$(MANDIR)/man1/$$n.1; \
	done

clean:
	rm -f common/*.o common/libsxm.a xenmem/*.o xenmem/libxenmem.a $(PLUGIN) $(FILTER) $(TOOLS) $(UNIT_TESTS) $(BENCH_BINS) $(FUZZERS) $(XEN_TEST_BINS) $(CRASH_BINS)
	rm -rf tests/tmp tests/fuzz/work

# A Debian package, built by Debian's tooling (debian/) from a copy of the
# source tree (the files git knows), so that dpkg-buildpackage's outputs
# land in build/deb and not beside the checkout: sxm_VERSION_amd64.deb here.
deb:
	@command -v dpkg-buildpackage >/dev/null && [ -f /usr/share/perl5/Debian/Debhelper/Dh_Lib.pm ] || \
	  { echo "make deb: needs dpkg-dev and debhelper (scripts/install-deps)" >&2; exit 1; }
	@git rev-parse --is-inside-work-tree >/dev/null 2>&1 || \
	  { echo "make deb: run it in a git checkout (the package is built from the files git knows)" >&2; exit 1; }
	@grep -q "^sxm ($(VERSION))" debian/changelog || \
	  { echo "make deb: debian/changelog's version is not $(VERSION)" >&2; exit 1; }
	rm -rf build/deb && mkdir -p build/deb/sxm-$(VERSION)
	git ls-files -z --cached --others --exclude-standard | \
	  xargs -0 cp --parents -t build/deb/sxm-$(VERSION)
	cd build/deb/sxm-$(VERSION) && dpkg-buildpackage -b -us -uc >../build.log 2>&1 || \
	  { tail -n 40 ../build.log; exit 1; }
	cp build/deb/sxm_$(VERSION)_amd64.deb .
	@echo "make deb: sxm_$(VERSION)_amd64.deb"
