# Container images by role, included by the Makefile:
#   make base-image   a Debian bookworm image with Python 3.11 (Debian's python3 and python3-venv)
#                     and ca-certificates, made with mmdebstrap and imported as $(BASE_IMAGE);
#                     nothing to do when it exists (FORCE=1 makes it again)
#   make images       the server image ($(SERVER_IMAGE), deployment/Dockerfile) and the client and
#                     demo image ($(CLIENT_IMAGE), deployment/Dockerfile.client), each with its
#                     size and build time (server-image and client-image build one)
#   make image-smoke  runs the server image in development mode on 127.0.0.1:$(IMAGE_TEST_PORT),
#                     waits for /readyz (the circuits compile when it starts), predicts over FHE
#                     with the client image, then removes the container
#   make image-test   the whole compose stack (deployment/compose.yaml) built, started and
#                     exercised through nginx: tests/test_images.py, which `make test` runs too
#
# The engine (CONTAINER_ENGINE): podman where it is installed, else docker when its daemon
# answers; Debian's podman is installed when neither is there. podman reads CONTAINERS_CONF
# (deployment/containers.conf unless the environment names another: runc, cgroupfs, ulimits) and
# nothing under /etc; it builds with --format docker, since an OCI image would drop the
# HEALTHCHECK. podman names the images localhost/fhe-server:latest and localhost/fhe-client:latest.
#
# The Python base (PYTHON_IMAGE): unset, it is the official $(OFFICIAL_PYTHON_IMAGE) when that
# is present or can be pulled, and otherwise (no container registry reachable, as on hosts that
# reach only Debian's mirror and PyPI) $(BASE_IMAGE), which `make base-image` makes first when
# it is missing. Both are Debian bookworm with Python 3.11. Set PYTHON_IMAGE to choose, say
# PYTHON_IMAGE=$(BASE_IMAGE) to skip the pull.
#
# Certificates: pip inside the builds is given CA_BUNDLE (by default this host's own bundle, so
# the builds trust what the host trusts, a TLS-re-signing proxy included) as the build secret
# `ca_bundle`, mounted for the pip steps alone and in no layer of the images; CA_BUNDLE= gives
# none. EXTRA_CA=/path/to/ca.pem adds a certificate to the system store of the base image that
# `make base-image` makes (and so of the images built on it). Debian's mirror is reached over
# plain http, its packages checked by apt's signatures.

IMAGES_DIR := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
IMAGES_CONTEXT := $(abspath $(IMAGES_DIR)/..)

# Found once, when first used.
ifeq ($(origin CONTAINER_ENGINE),undefined)
CONTAINER_ENGINE = $(eval CONTAINER_ENGINE := $$(shell command -v podman >/dev/null && echo podman || \
	{ docker info >/dev/null 2>&1 && echo docker; } || echo podman))$(CONTAINER_ENGINE)
endif
CONTAINERS_CONF ?= $(IMAGES_DIR)/containers.conf
OFFICIAL_PYTHON_IMAGE ?= docker.io/library/python:3.11.7-slim-bookworm
BASE_IMAGE ?= localhost/fhe-base:bookworm
PYTHON_IMAGE ?=
IMAGE_TAG ?= latest
# Named localhost/... under docker too, as compose.yaml's defaults name them.
SERVER_IMAGE ?= localhost/fhe-server:$(IMAGE_TAG)
CLIENT_IMAGE ?= localhost/fhe-client:$(IMAGE_TAG)
CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
EXTRA_CA ?=
PULL_TIMEOUT ?= 300
IMAGE_TEST_PORT ?= 18000
IMAGE_TEST_TIMEOUT ?= 300

IS_PODMAN = $(findstring podman,$(notdir $(CONTAINER_ENGINE)))
ENGINE = env $(if $(IS_PODMAN),CONTAINERS_CONF=$(CONTAINERS_CONF),DOCKER_BUILDKIT=1) $(CONTAINER_ENGINE)
IMAGE_BUILD_FLAGS = $(if $(IS_PODMAN),--format docker) \
	$(if $(CA_BUNDLE),--secret id=ca_bundle$(,)src=$(CA_BUNDLE))
, := ,

.PHONY: container-engine base-image images server-image client-image image-smoke image-test

container-engine:
	@command -v $(CONTAINER_ENGINE) >/dev/null || { \
		echo "no working docker or podman: installing Debian's podman"; \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq podman; }

base-image: container-engine
	@command -v mmdebstrap >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq mmdebstrap; }
	@env $(if $(IS_PODMAN),CONTAINERS_CONF=$(CONTAINERS_CONF)) ENGINE=$(CONTAINER_ENGINE) \
		BASE_IMAGE=$(BASE_IMAGE) EXTRA_CA=$(EXTRA_CA) FORCE=$(FORCE) bash $(IMAGES_DIR)/base-image/build.sh

# Sets the shell variable `base` to the Python base image (see PYTHON_IMAGE above).
define choose_python_image
base='$(PYTHON_IMAGE)'; \
if [ -z "$$base" ]; then \
	if $(ENGINE) image inspect $(OFFICIAL_PYTHON_IMAGE) >/dev/null 2>&1 || \
		timeout $(PULL_TIMEOUT) $(ENGINE) pull -q $(OFFICIAL_PYTHON_IMAGE) >/dev/null 2>&1; then \
		base=$(OFFICIAL_PYTHON_IMAGE); \
	else \
		echo "$(OFFICIAL_PYTHON_IMAGE) cannot be pulled: building on $(BASE_IMAGE)"; \
		$(MAKE) --no-print-directory base-image || exit 1; \
		base=$(BASE_IMAGE); \
	fi; \
fi; \
echo "Python base image: $$base"
endef

# $(call build_image,Dockerfile,image): builds it on $$base, then says its size and build time.
define build_image
start=$$(date +%s); \
$(ENGINE) build $(IMAGE_BUILD_FLAGS) --build-arg PYTHON_IMAGE=$$base \
	-f $(IMAGES_DIR)/$(1) -t $(2) $(IMAGES_CONTEXT) || exit 1; \
seconds=$$(( $$(date +%s) - start )); \
size=$$($(ENGINE) image inspect --format '{{.Size}}' $(2) | awk '{printf "%.0f MB", $$1 / 1e6}'); \
summary="$${summary}$(2): $$size, built in $$seconds s\n"; \
echo "$(2): $$size, built in $$seconds s"
endef

images: container-engine
	@summary=''; $(choose_python_image); \
	$(call build_image,Dockerfile,$(SERVER_IMAGE)); \
	$(call build_image,Dockerfile.client,$(CLIENT_IMAGE)); \
	printf "$$summary"

server-image: container-engine
	@summary=''; $(choose_python_image); $(call build_image,Dockerfile,$(SERVER_IMAGE))

client-image: container-engine
	@summary=''; $(choose_python_image); $(call build_image,Dockerfile.client,$(CLIENT_IMAGE))

# Builds what it needs (make base-image images; stand-ins for third-party images that cannot be
# pulled), starts the stack on loopback ports, exercises it, prints sizes and times (also in
# test-artifacts/image-test.json) and removes the containers, networks and volumes it started.
image-test: install system-packages
	$(BIN)/pytest -s -m images tests/test_images.py

# The client container shares the host's network to reach the server's published port. podman
# without systemd runs no health-check timers (it says so on stderr, which is kept out of the
# way): the server's HEALTHCHECK is run once by hand instead, and the client runs without one.
image-smoke: container-engine
	@name=fhe-image-smoke-$$$$; url=http://127.0.0.1:$(IMAGE_TEST_PORT); err=$$(mktemp); \
	trap 'status=$$?; [ $$status = 0 ] || $(ENGINE) logs --tail 40 $$name; \
		$(ENGINE) rm -f -v $$name >/dev/null 2>&1; rm -f $$err; exit $$status' EXIT; \
	$(ENGINE) run -d --name $$name -p 127.0.0.1:$(IMAGE_TEST_PORT):8000 $(SERVER_IMAGE) \
		serve --dev >/dev/null 2>$$err || { cat $$err; exit 1; }; \
	start=$$(date +%s); \
	until python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=5)" \
		$$url/readyz 2>/dev/null; do \
		[ $$(( $$(date +%s) - start )) -lt $(IMAGE_TEST_TIMEOUT) ] || { \
			echo "$(SERVER_IMAGE): not ready in $(IMAGE_TEST_TIMEOUT) s"; exit 1; }; \
		sleep 2; \
	done; \
	echo "$(SERVER_IMAGE): ready (/readyz) in $$(( $$(date +%s) - start )) s"; \
	$(if $(IS_PODMAN),$(ENGINE) healthcheck run $$name 2>$$err || { cat $$err; exit 1; }; \
		echo "$(SERVER_IMAGE): HEALTHCHECK passes";) \
	for model in sentiment-linear sentiment; do \
		$(ENGINE) run --rm --no-healthcheck --network host $(CLIENT_IMAGE) \
			predict --server $$url -m $$model "great flight" || exit 1; \
	done
