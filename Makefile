# The README's two commands. Both install missing Debian packages first.
#   make serve   set up, build, make the demo models if needed, run `infergrid serve`
#   make test    set up, build, run every test (unit + integration)
BUILD_DIR ?= build
JOBS ?= 2
SERVE_ARGS ?=

.PHONY: deps configure build serve test unit clean

deps:
	bash tools/install-deps.sh

configure: deps
	@if [ ! -f $(BUILD_DIR)/build.ninja ]; then \
	  cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo; \
	fi

build: configure
	cmake --build $(BUILD_DIR) -j $(JOBS)

serve: build
	./$(BUILD_DIR)/tools/infergrid serve $(SERVE_ARGS)

test: build
	cd $(BUILD_DIR) && ctest --output-on-failure --timeout 600 -j $(JOBS)

unit: build
	cd $(BUILD_DIR) && ctest --output-on-failure -L unit -j $(JOBS)

clean:
	rm -rf $(BUILD_DIR)
