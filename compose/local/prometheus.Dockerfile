# Prometheus from Debian's package (scripts/images makes BASE with it), started as the official image starts it.
ARG BASE=batch-prometheus-base:bookworm
FROM ${BASE}
RUN install -d -o nobody -g nogroup /prometheus
USER nobody
VOLUME /prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]
