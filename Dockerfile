# syntax=docker/dockerfile:1
# import-watcher: the builder turns the source and every dependency into wheels; the final
# image installs only those wheels (no compiler, no network, no source tree) and runs as a
# non-root user with its state on a volume.

FROM python:3.12-slim AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is built from, so editing tests or docs does not bust this cache.
COPY pyproject.toml README.md ./
COPY watcher ./watcher
RUN pip wheel --wheel-dir /wheels .

FROM python:3.12-slim
LABEL org.opencontainers.image.title="import-watcher" \
      org.opencontainers.image.description="Watches Twilio SendGrid contact import jobs until they end and notifies people." \
      org.opencontainers.image.licenses="MIT"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    WATCHER_CONFIG=/etc/import-watcher/config.yaml
# A fixed uid/gid, so Kubernetes' runAsUser and volume ownership can name it.
RUN groupadd --system --gid 10001 watcher \
    && useradd --system --uid 10001 --gid watcher --no-create-home \
       --home-dir /var/lib/import-watcher --shell /usr/sbin/nologin watcher \
    && mkdir -p /etc/import-watcher /var/lib/import-watcher \
    && chown watcher:watcher /var/lib/import-watcher
# The wheels are bind-mounted from the builder, so they never become a layer of this image.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/import_watcher-*.whl
# The default state URL (sqlite:///import-watcher.db) is relative to the working directory.
WORKDIR /var/lib/import-watcher
VOLUME ["/var/lib/import-watcher"]
USER 10001:10001
EXPOSE 8080
# SIGTERM stops taking work and finishes in-flight work within shutdown_grace (default 20s):
# give the container more than that (docker stop -t 30, compose stop_grace_period: 30s).
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["import-watcher", "healthcheck", "-c", "/etc/import-watcher/config.yaml"]
ENTRYPOINT ["import-watcher"]
CMD ["run", "-c", "/etc/import-watcher/config.yaml"]
