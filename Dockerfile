# dmrimc-bids as a BIDS App (the version lives in dmrimc_bids/__init__.py only; the build refuses another):
#   VERSION=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' dmrimc_bids/__init__.py)
#   docker build --build-arg VERSION=$VERSION -t dmrimc-bids:$VERSION .
#   docker run --rm -u "$(id -u):$(id -g)" -v /data/bids:/bids:ro -v /data/out:/out -v /scratch:/work \
#       dmrimc-bids:$VERSION /bids /out participant -w /work --nprocs 8 --mem 16G
# The install steps live in containers/install.sh, shared with containers/apptainer.def and CI (.ci/run).
# BASE: any Debian (bookworm) image with python3 and python3-venv; containers/check-image.sh builds one from
# Debian's packages where no registry is reachable
ARG BASE=python:3.11.7-slim-bookworm
FROM ${BASE}

# the package's version (dmrimc_bids/__init__.py), required: install.sh --expect-version checks it
ARG VERSION
# the project's code URL, when it has one: --build-arg SOURCE=https://... (labels and CodeURL stay empty without)
ARG SOURCE=
# TemplateFlow atlases baked in for offline group-level ROIs (--atlas); empty to skip
ARG TEMPLATEFLOW_ATLASES="MNI152NLin2009cAsym:Schaefer2018:100Parcels7Networks:2 MNI152NLin2009cAsym:HOSPA:th25:2"

LABEL org.opencontainers.image.title="dmrimc-bids" \
      org.opencontainers.image.description="BIDS App: histology-informed diffusion MRI microstructure and microvasculature maps (Histo-uSim, SpinFlowSim)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.url="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV DMRIMC_VENV=/opt/dmrimc \
    PATH=/opt/dmrimc/bin:$PATH \
    TEMPLATEFLOW_HOME=/opt/templateflow \
    TEMPLATEFLOW_AUTOUPDATE=0 \
    NUMBA_CACHE_DIR=/opt/numba_cache \
    NIPYPE_NO_ET=1 \
    OMP_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DMRIMC_CONTAINER_TYPE=docker \
    DMRIMC_CONTAINER_TAG=dmrimc-bids:${VERSION} \
    DMRIMC_PROJECT_URL=${SOURCE} \
    HOME=/home/dmrimc

COPY . /src/dmrimc-bids/
# the embedded dictionaries are package data: they come with the install; the smoke test on the demo
# dataset compiles the numba kernels into NUMBA_CACHE_DIR
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN TF_ARGS=(); for spec in ${TEMPLATEFLOW_ATLASES}; do TF_ARGS+=(--templateflow "$spec"); done; \
    /src/dmrimc-bids/containers/install.sh --venv "${DMRIMC_VENV}" --extras spice,atlas,plots,video "${TF_ARGS[@]}" \
        --numba-cache "${NUMBA_CACHE_DIR}" --smoke-test --slim --expect-version "${VERSION}" \
    && rm -rf /src/dmrimc-bids /tmp/matplotlib \
    && useradd --create-home --home-dir /home/dmrimc --shell /bin/bash --uid 1000 dmrimc \
    && chmod -R go=u /home/dmrimc

USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["dmrimc-bids"]
CMD ["--help"]
