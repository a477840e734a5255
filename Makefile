# make run  : set up, build, and run the main job (train on Fashion-MNIST, write samples)
# make test : set up, build, and run every test
BUILD ?= build
JOBS ?= $(shell nproc)

.PHONY: all setup build run test clean
all: build

setup:
	bash scripts/setup.sh

build: setup
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release
	cmake --build $(BUILD) -j $(JOBS)

run: build
	bash scripts/run_main.sh $(BUILD)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS) --timeout 1200

clean:
	rm -rf $(BUILD)
