# Thin wrapper over deploy/install-deps.sh and CMake. The two commands a reader needs:
#   make demo   build, start the server on the built-in default, drive it with loractl, stop it
#   make test   build and run the whole test suite (ctest)
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= 2
CMAKE_FLAGS ?=
# The CUDA flavour: PyPI's CUDA LibTorch (deploy/torch-cuda-requirements.txt) in .venv-torch-cuda.
CUDA_BUILD_DIR ?= build-cuda
CUDA_HOME ?= /usr/local/cuda
CUDA_ARCHS ?= 80;90

# ccache: paths under the checkout are hashed relative to it, so a fresh clone in another folder
# still hits the cache.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := true
export CCACHE_SLOPPINESS := include_file_mtime,include_file_ctime,time_macros

.PHONY: all deps configure build test demo bench clean build-cuda test-cuda build-asan test-asan build-tsan test-tsan build-fuzz fuzz

all: build

deps:
	@bash deploy/install-deps.sh

configure: deps
	@cmake -S . -B $(BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j$(JOBS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure -j$(JOBS)

demo: build
	@bash deploy/demo.sh $(BUILD_DIR)

# The CUDA flavour: compiles and links everything (kernels included) against PyPI's CUDA LibTorch.
# Its binaries run on the CPU too: test-cuda runs the whole suite on that build.
build-cuda: deps
	@cmake -S . -B $(CUDA_BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DLORASERVE_CUDA=ON \
	  -DCMAKE_PREFIX_PATH="$$(bash deploy/install-torch-cuda.sh --print-prefix)" \
	  -DCMAKE_CUDA_COMPILER=$(CUDA_HOME)/bin/nvcc -DLORASERVE_CUDA_ARCHS="$(CUDA_ARCHS)" \
	  -DTORCH_CUDA_ARCH_LIST="$$(echo '$(CUDA_ARCHS)' | sed -E 's/([0-9])([0-9])/\1.\2/g')" \
	  $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(CUDA_BUILD_DIR) -j$(JOBS)

test-cuda: build-cuda
	cd $(CUDA_BUILD_DIR) && ctest --output-on-failure -j$(JOBS)

# Sanitizers (README "CI stages"): the whole suite under AddressSanitizer + UndefinedBehaviorSanitizer,
# and the concurrency tests (in-process servers, clients on many threads, the scheduler and the
# engine) under ThreadSanitizer. Any report fails the test that produced it.
ASAN_BUILD_DIR ?= build-asan
TSAN_BUILD_DIR ?= build-tsan
TSAN_TESTS ?= ^(AdapterService|InferenceService|ClientThreads|ClientRetry|TenantServer|TenantLimiter|StateServer|ServerLifecycle|HttpEndpoint|Health|Scheduler|Engine|SmallQueue|SmallAdapterBudget|RawUpload|RootedServer|Tls)Test\.
# The executables holding those tests: the TSan build compiles only these (and what they link).
TSAN_TARGETS ?= adapter_service_test inference_service_test client_threads_test client_retry_test \
  tenants_test state_test server_lifecycle_test http_endpoint_test health_test scheduler_test \
  engine_test tls_test
ASAN_ENV := ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0 \
  UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

build-asan: deps
	@cmake -S . -B $(ASAN_BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DLORASERVE_ASAN=ON -DLORASERVE_BUILD_BENCH=OFF $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(ASAN_BUILD_DIR) -j$(JOBS)

test-asan: build-asan
	cd $(ASAN_BUILD_DIR) && $(ASAN_ENV) ctest --output-on-failure -j$(JOBS)

build-tsan: deps
	@cmake -S . -B $(TSAN_BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DLORASERVE_TSAN=ON -DLORASERVE_BUILD_BENCH=OFF $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(TSAN_BUILD_DIR) -j$(JOBS) --target $(TSAN_TARGETS)

test-tsan: build-tsan
	cd $(TSAN_BUILD_DIR) && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
	  ctest --output-on-failure -j$(JOBS) -R '$(TSAN_TESTS)'

# libFuzzer (clang, ASan + UBSan): builds only the fuzz targets and runs each for FUZZ_SECONDS on a
# scratch corpus seeded from tests/fuzz/corpus/ (README "Fuzzing"); a crash fails the run and
# leaves its input in $(FUZZ_BUILD_DIR)/tests/fuzz/<target>.work/crashes/.
FUZZ_BUILD_DIR ?= build-fuzz
FUZZ_SECONDS ?= 30

build-fuzz:
	@bash deploy/install-deps.sh --fuzz
	@CC=clang CXX=clang++ cmake -S . -B $(FUZZ_BUILD_DIR) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) -DLORASERVE_FUZZ=ON \
	  -DLORASERVE_BUILD_BENCH=OFF -DLORASERVE_FUZZ_SECONDS=$(FUZZ_SECONDS) $(CMAKE_FLAGS) >/dev/null
	@cmake --build $(FUZZ_BUILD_DIR) -j$(JOBS) --target fuzzers

fuzz: build-fuzz
	cd $(FUZZ_BUILD_DIR) && ctest --output-on-failure -j$(JOBS) -R '_fuzz_(corpus|run)$$'

bench: build
	@echo "benchmarks are in $(BUILD_DIR)/bench/ (run each binary; see README)"

clean:
	rm -rf $(BUILD_DIR)
