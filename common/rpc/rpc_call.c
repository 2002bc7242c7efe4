/* rpc_call.c: protobuf-c <-> grpc_byte_buffer, status mapping, channel creation and synchronous unary calls. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "common/fileio.h"
#include "common/log.h"
#include "common/rpc/rpc.h"
#include "common/rpc/rpc_int.h"
#include "common/status.h"

void rpc_init(void) { grpc_init(); }
void rpc_shutdown(void) { grpc_shutdown(); }

grpc_byte_buffer *rpc_pack(const ProtobufCMessage *msg) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  grpc_slice slice = grpc_slice_malloc(n);
  protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  return bb;
}

int rpc_unpack(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *desc, ProtobufCMessage **out) {
  *out = NULL;
  grpc_byte_buffer_reader reader;
  if (!grpc_byte_buffer_reader_init(&reader, bb)) return STRATA_EFORMAT;
  /* NOTE: readall joins every slice; a message may arrive split across many. */
  grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  *out = protobuf_c_message_unpack(desc, NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
  grpc_slice_unref(all);
  return *out ? 0 : STRATA_EFORMAT;
}

int rpc_status_to_strata(grpc_status_code code) {
  switch (code) {
    case GRPC_STATUS_OK: return 0;
    case GRPC_STATUS_CANCELLED: return STRATA_ECANCELED;
    case GRPC_STATUS_INVALID_ARGUMENT: return STRATA_EINVAL;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return STRATA_ETIMEDOUT;
    case GRPC_STATUS_NOT_FOUND: return STRATA_ENOTFOUND;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return STRATA_EFULL;
    case GRPC_STATUS_FAILED_PRECONDITION: return STRATA_EAGAIN;
    case GRPC_STATUS_ABORTED: return STRATA_EAGAIN;
    case GRPC_STATUS_OUT_OF_RANGE: return STRATA_ERANGE;
    case GRPC_STATUS_UNIMPLEMENTED: return STRATA_EUNSUPPORTED;
    case GRPC_STATUS_UNAVAILABLE: return STRATA_EUNAVAILABLE;
    case GRPC_STATUS_PERMISSION_DENIED:
    case GRPC_STATUS_UNAUTHENTICATED: return STRATA_EAUTH;
    default: return STRATA_EINTERNAL;
  }
}

const char *rpc_status_name(grpc_status_code code) {
  static const char *const names[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
      "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
  if ((int)code < 0 || (size_t)code >= sizeof(names) / sizeof(names[0])) return "UNKNOWN";
  return names[code];
}

void rpc_status_fill(rpc_status_t *st, grpc_status_code code, grpc_slice details) {
  if (!st) return;
  st->code = code;
  size_t n = GRPC_SLICE_LENGTH(details);
  if (n >= sizeof(st->details)) n = sizeof(st->details) - 1;
  memcpy(st->details, GRPC_SLICE_START_PTR(details), n);
  st->details[n] = '\0';
}

gpr_timespec rpc_deadline_ms(int64_t timeout_ms) {
  if (timeout_ms <= 0) return gpr_inf_future(GPR_CLOCK_REALTIME);
  return gpr_time_add(gpr_now(GPR_CLOCK_REALTIME), gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

int rpc_channel_new(const char *target, const rpc_channel_opts_t *opts, grpc_channel **out) {
  static const rpc_channel_opts_t defaults = {0};
  if (!opts) opts = &defaults;
  *out = NULL;
  if (!target || !*target) {
    log_error("rpc: empty channel target");
    return STRATA_EINVAL;
  }
  grpc_channel_credentials *creds = NULL;
  if (opts->ca_file) {
    char *pem = NULL;
    size_t n = 0;
    int rc = file_read_all(opts->ca_file, 1 << 20, &pem, &n);
    if (rc < 0) {
      log_error("rpc: cannot read CA file %s for %s: %s", opts->ca_file, target, strata_strerror(rc));
      return STRATA_EIO;
    }
    creds = grpc_ssl_credentials_create(pem, NULL, NULL, NULL);
    free(pem);
  } else {
    creds = grpc_insecure_credentials_create();
  }
  if (!creds) return STRATA_ENOMEM;
  grpc_arg args[8];
  size_t n_args = 0;
  char k_min[] = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, k_init[] = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
  char k_max[] = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, k_recv[] = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  char k_ka[] = GRPC_ARG_KEEPALIVE_TIME_MS, k_ka_to[] = GRPC_ARG_KEEPALIVE_TIMEOUT_MS;
  char k_ka_idle[] = GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, k_pings[] = GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA;
  int min_ms = opts->reconnect_min_ms > 0 ? opts->reconnect_min_ms : 100;
  int max_ms = opts->reconnect_max_ms > 0 ? opts->reconnect_max_ms : 1000;
  /* NOTE: gRPC's default reconnect backoff grows to 120 s; a restarted etcd or worker would then
   * stay unreachable for minutes. Keep it short. */
  args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = k_min, .value.integer = min_ms};
  args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = k_init, .value.integer = min_ms};
  args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = k_max, .value.integer = max_ms};
  if (opts->max_recv_bytes > 0)
    args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = k_recv, .value.integer = opts->max_recv_bytes};
  if (opts->keepalive_ms > 0) {
    int to_ms = opts->keepalive_timeout_ms > 0 ? opts->keepalive_timeout_ms : 5000;
    args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = k_ka, .value.integer = opts->keepalive_ms};
    args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = k_ka_to, .value.integer = to_ms};
    args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = k_ka_idle, .value.integer = 1};
    /* NOTE: by default a client sends only 2 pings until it sends data again; on a server-streaming
     * call the client sends nothing after the request, so keepalive would stop after two pings. */
    args[n_args++] = (grpc_arg){.type = GRPC_ARG_INTEGER, .key = k_pings, .value.integer = 0};
  }
  grpc_channel_args ca = {.num_args = n_args, .args = args};
  *out = grpc_channel_create(target, creds, &ca);
  grpc_channel_credentials_release(creds);
  return *out ? 0 : STRATA_ENOMEM;
}

int rpc_unary_call(grpc_channel *ch, const char *method, const ProtobufCMessage *req,
                   const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                   int64_t timeout_ms, rpc_status_t *st) {
  *resp = NULL;
  if (st) {
    st->code = GRPC_STATUS_UNKNOWN;
    st->details[0] = '\0';
  }
  int rc = STRATA_ENOMEM;
  grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
  /* Never an infinite wait: a zero or negative budget still means "now". */
  if (timeout_ms < 1) timeout_ms = 1;
  grpc_slice path = grpc_slice_from_copied_string(method);
  grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, path, NULL,
                                             rpc_deadline_ms(timeout_ms), NULL);
  grpc_slice_unref(path);
  grpc_byte_buffer *send = rpc_pack(req), *recv = NULL;
  grpc_metadata_array md_init, md_trail;
  grpc_metadata_array_init(&md_init);
  grpc_metadata_array_init(&md_trail);
  grpc_status_code code = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  const char *err_string = NULL;
  if (!call || !send) goto done;

  grpc_op ops[6];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &md_init;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &md_trail;
  ops[5].data.recv_status_on_client.status = &code;
  ops[5].data.recv_status_on_client.status_details = &details;
  ops[5].data.recv_status_on_client.error_string = &err_string;
  static int tag;
  if (grpc_call_start_batch(call, ops, 6, &tag, NULL) != GRPC_CALL_OK) {
    rc = STRATA_EINTERNAL;
    goto done;
  }
  /* The call's own deadline bounds this wait. */
  grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  (void)ev;
  rpc_status_fill(st, code, details);
  rc = rpc_status_to_strata(code);
  if (rc == 0) {
    if (!recv)
      rc = STRATA_EFORMAT;
    else
      rc = rpc_unpack(recv, resp_desc, resp);
  }
done:
  if (recv) grpc_byte_buffer_destroy(recv);
  if (send) grpc_byte_buffer_destroy(send);
  grpc_slice_unref(details);
  if (err_string) gpr_free((void *)err_string);
  grpc_metadata_array_destroy(&md_init);
  grpc_metadata_array_destroy(&md_trail);
  if (call) grpc_call_unref(call);
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
  return rc;
}
