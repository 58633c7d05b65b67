#ifndef CRABBITMQ_SHIM_H
#define CRABBITMQ_SHIM_H

/* rabbitmq-c >= 0.12 installs <rabbitmq-c/amqp.h>; Debian 12's 0.11.0 installs <amqp.h> at top level. */
#if __has_include(<rabbitmq-c/amqp.h>)
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/ssl_socket.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#endif
#include <string.h>

/* amqp_login_with_properties() is variadic (SASL arguments), which Swift cannot call. This wrapper logs in with
   PLAIN and names the connection (`connection_name`, shown by the management UI and API). */
static inline amqp_rpc_reply_t crmq_login(amqp_connection_state_t state, const char *vhost, int frame_max,
                                          int heartbeat, const char *user, const char *password,
                                          const char *connection_name) {
    amqp_table_entry_t entries[1];
    entries[0].key = amqp_cstring_bytes("connection_name");
    entries[0].value.kind = AMQP_FIELD_KIND_UTF8;
    entries[0].value.value.bytes = amqp_cstring_bytes(connection_name);
    amqp_table_t properties = {1, entries};
    return amqp_login_with_properties(state, vhost, 0, frame_max, heartbeat, &properties, AMQP_SASL_METHOD_PLAIN,
                                      user, password);
}

/* queue.declare with the arguments Batch uses: a dead-letter exchange (NULL for none) and a queue type (NULL for the
   broker's default). Returns NULL on failure; amqp_get_rpc_reply() says why. */
static inline amqp_queue_declare_ok_t *crmq_queue_declare(amqp_connection_state_t state, amqp_channel_t channel,
                                                          const char *queue, int durable, int exclusive,
                                                          int auto_delete, const char *dead_letter_exchange,
                                                          const char *queue_type) {
    amqp_table_entry_t entries[2];
    int count = 0;
    if (dead_letter_exchange != NULL) {
        entries[count].key = amqp_cstring_bytes("x-dead-letter-exchange");
        entries[count].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[count].value.value.bytes = amqp_cstring_bytes(dead_letter_exchange);
        count++;
    }
    if (queue_type != NULL) {
        entries[count].key = amqp_cstring_bytes("x-queue-type");
        entries[count].value.kind = AMQP_FIELD_KIND_UTF8;
        entries[count].value.value.bytes = amqp_cstring_bytes(queue_type);
        count++;
    }
    amqp_table_t arguments = {count, entries};
    return amqp_queue_declare(state, channel, amqp_cstring_bytes(queue), 0, durable, exclusive, auto_delete,
                              arguments);
}

#endif
