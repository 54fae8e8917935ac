# Thin wrapper over deploy/install-deps.sh and CMake. The two commands a reader needs:
#   make demo   build, start the server on the built-in default, drive it with loractl, stop it
#   make test   build and run the whole test suite (ctest)
BUILD_DIR ?= build
BUILD_TYPE ?= Release
JOBS ?= 2
CMAKE_FLAGS ?=

# ccache: paths under the checkout are hashed relative to it, so a fresh clone in another folder
# still hits the cache.
export CCACHE_BASEDIR := $(CURDIR)
export CCACHE_NOHASHDIR := true
export CCACHE_SLOPPINESS := include_file_mtime,include_file_ctime,time_macros

.PHONY: all deps configure build test demo bench clean

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

bench: build
	@echo "benchmarks are in $(BUILD_DIR)/bench/ (run each binary; see README)"

clean:
	rm -rf $(BUILD_DIR)
