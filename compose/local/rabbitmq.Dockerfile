# RabbitMQ from Debian's rabbitmq-server package (scripts/images makes BASE with it), started as the official image
# starts it: configuration from /etc/rabbitmq/conf.d, plugins from /etc/rabbitmq/enabled_plugins, logs on stdout.
ARG BASE=batch-rabbitmq-base:bookworm
FROM ${BASE}
COPY rabbitmq-entrypoint /usr/local/bin/docker-entrypoint.sh
RUN install -d -o rabbitmq -g rabbitmq /etc/rabbitmq/conf.d /var/lib/rabbitmq
VOLUME /var/lib/rabbitmq
EXPOSE 5672 15672 15692
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["rabbitmq-server"]
