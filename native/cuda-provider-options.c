/*
 * CUDA provider options for onnxruntime-node.
 *
 * onnxruntime-node (1.29) appends the CUDA provider with only its device id set: NHWC convolutions,
 * cuDNN's algorithm search, the arena's growth — every other CUDA provider option stays at its default,
 * and the binding has no way to pass them. This Node add-on closes that gap from the outside, through
 * onnxruntime's stable C API: it finds the OrtApi table of the libonnxruntime the binding loaded and
 * replaces its SessionOptionsAppendExecutionProvider_CUDA_V2 entry with one that first updates the
 * binding's OrtCUDAProviderOptionsV2 with the options given to configure(), then calls the original.
 * Options the binding set (the device id) are kept: the update starts from the options' own string
 * form (GetCUDAProviderOptionsAsString) with ours laid over it.
 *
 * Every session created from options the append saw is also handed to bound-runs.c, which runs it through IO
 * binding when the options have enable_cuda_graph=1 (what the provider's CUDA graphs need) or when the session
 * carries state from run to run (carry.* outputs). carried() reads that state.
 *
 * The positions of what is used in the OrtApi table are in ort-api.h. Built by `photo-edit-bot setup cuda` (src/engine/runtime/cuda-options.ts) with the system's C
 * compiler and the node-api-headers package; nothing here needs onnxruntime's headers.
 */
#include <dlfcn.h>
#include <node_api.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ort-api.h"

#define MAX_OPTIONS 64
#define MAX_TEXT 4096

void **ort_api; /* the OrtApi table, patched in place */
static AppendCudaFn original_append;
static char version[32];

/* What configure() set: key/value pairs in one buffer, pointers into it. */
static char option_text[MAX_TEXT];
static const char *option_keys[MAX_OPTIONS];
static const char *option_values[MAX_OPTIONS];
static size_t option_count;

/* What the last append did, for status(): the options it passed on, or why it could not. */
static char last_applied[MAX_TEXT];
static char last_error[512];
static uint32_t append_calls;

static void keep_error(Status st, const char *what) {
  snprintf(last_error, sizeof last_error, "%s: %s", what, API(GetErrorMessageFn, ORT_GET_ERROR_MESSAGE)(st));
}

/* The options' string form ("k=v;k=v;"), or NULL with last_error set. Free with free_string. */
static char *options_as_string(const void *cuda_options, void **allocator) {
  Status st = API(GetAllocatorFn, ORT_GET_ALLOCATOR_WITH_DEFAULT_OPTIONS)(allocator);
  char *text = NULL;
  if (!st) st = API(CudaOptionsAsStringFn, ORT_CUDA_OPTIONS_AS_STRING)(cuda_options, *allocator, &text);
  if (st) {
    keep_error(st, "reading the CUDA provider options");
    API(ReleaseStatusFn, ORT_RELEASE_STATUS)(st);
    return NULL;
  }
  return text;
}

static void free_string(void *allocator, char *text) {
  Status st = API(AllocatorFreeFn, ORT_ALLOCATOR_FREE)(allocator, text);
  if (st) API(ReleaseStatusFn, ORT_RELEASE_STATUS)(st);
}

/* Splits "k=v;k=v;" in place into keys/values after those already there; returns the new count. */
static size_t split_pairs(char *text, const char **keys, const char **values, size_t n) {
  for (char *save = NULL, *pair = strtok_r(text, ";", &save); pair && n < MAX_OPTIONS * 2;
       pair = strtok_r(NULL, ";", &save)) {
    char *eq = strchr(pair, '=');
    if (!eq) continue;
    *eq = '\0';
    keys[n] = pair;
    values[n] = eq + 1;
    n++;
  }
  return n;
}

/* The value of `key` in "k=v;k=v;" (pointing into the text, up to its ';'), or NULL. */
static const char *option_value(const char *text, const char *key) {
  size_t len = strlen(key);
  for (const char *p = text; p && *p; p = strchr(p, ';') ? strchr(p, ';') + 1 : NULL)
    if (strncmp(p, key, len) == 0 && p[len] == '=') return p + len + 1;
  return NULL;
}

/* Whether configure()'s options turn CUDA graphs on (the provider's string form leaves that key out). */
static int graphs_on(void) {
  for (size_t i = 0; i < option_count; i++)
    if (strcmp(option_keys[i], "enable_cuda_graph") == 0 && strcmp(option_values[i], "1") == 0) return 1;
  return 0;
}

/* Lays configure()'s options over the binding's (`merged`: their string form, split in place here). */
static Status lay_ours_over(const void *cuda_options, char *merged) {
  const char *keys[MAX_OPTIONS * 2], *values[MAX_OPTIONS * 2];
  size_t n = split_pairs(merged, keys, values, 0);
  /* Ours last: onnxruntime's option parser keeps the last value of a key. */
  for (size_t i = 0; i < option_count && n < MAX_OPTIONS * 2; i++, n++) {
    keys[n] = option_keys[i];
    values[n] = option_values[i];
  }
  /* The binding created these options for this call and releases them after it: updating is safe. */
  Status st = API(UpdateCudaOptionsFn, ORT_UPDATE_CUDA_OPTIONS)((void *)cuda_options, keys, values, n);
  if (st) {
    keep_error(st, "setting the CUDA provider options");
    return st;
  }
  void *allocator = NULL;
  char *applied = options_as_string(cuda_options, &allocator);
  if (applied) {
    snprintf(last_applied, sizeof last_applied, "%s", applied);
    free_string(allocator, applied);
  }
  return NULL;
}

/* The table's new SessionOptionsAppendExecutionProvider_CUDA_V2. */
static Status append_cuda_with_options(void *session_options, const void *cuda_options) {
  append_calls++;
  void *allocator = NULL;
  char *current = options_as_string(cuda_options, &allocator);
  /* Without a CUDA provider there is nothing to read: the original says so in its own words. */
  if (!current) return original_append(session_options, cuda_options);
  char text[MAX_TEXT * 2];
  snprintf(text, sizeof text, "%s", current);
  free_string(allocator, current);
  if (option_count > 0) {
    Status st = lay_ours_over(cuda_options, text);
    if (st) return st; /* the session fails with onnxruntime's message (e.g. an unknown value) */
    snprintf(text, sizeof text, "%s", last_applied);
  }
  const char *device = option_value(text, "device_id");
  int device_id = device ? atoi(device) : 0;
  Status st = original_append(session_options, cuda_options);
  /* The session made from these options is bound (bound-runs.c) when it captures CUDA graphs, which need bound
   * inputs and outputs, or when it carries state, which bound runs keep on the device. */
  if (!st) bound_runs_expect(session_options, device_id, graphs_on());
  return st;
}

/* Replaces one entry of the table, which lives in read-only memory after relocation. */
int patch_api_entry(int index, void *fn) {
  void **entry = &ort_api[index];
  long page = sysconf(_SC_PAGESIZE);
  void *start = (void *)((uintptr_t)entry & ~(uintptr_t)(page - 1));
  if (mprotect(start, (size_t)page, PROT_READ | PROT_WRITE) != 0) return -1;
  *entry = fn;
  return mprotect(start, (size_t)page, PROT_READ);
}

static napi_value throw_error(napi_env env, const char *message) {
  napi_throw_error(env, NULL, message);
  return NULL;
}

static size_t string_arg(napi_env env, napi_value v, char *buf, size_t size) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, buf, size, &len) != napi_ok) return (size_t)-1;
  return len;
}

/*
 * configure(libonnxruntimePath, "k=v;k=v") → onnxruntime's version string. Finds the library's OrtApi
 * (the one the binding already loaded), patches it once, and sets the options later appends get.
 */
static napi_value configure(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char path[4096];
  if (argc != 2 || string_arg(env, argv[0], path, sizeof path) == (size_t)-1)
    return throw_error(env, "configure(libonnxruntimePath, options): the path must be a string");
  char text[MAX_TEXT];
  size_t len = string_arg(env, argv[1], text, sizeof text);
  if (len == (size_t)-1) return throw_error(env, "configure: the options must be a string");
  if (len >= sizeof text - 1) return throw_error(env, "configure: the options are too long");

  if (!ort_api) {
    void *lib = dlopen(path, RTLD_NOW | RTLD_NOLOAD);
    if (!lib) lib = dlopen(path, RTLD_NOW);
    if (!lib) return throw_error(env, dlerror());
    GetApiBaseFn get_base = (GetApiBaseFn)dlsym(lib, "OrtGetApiBase");
    if (!get_base) return throw_error(env, "the library has no OrtGetApiBase: not onnxruntime");
    const ApiBase *base = get_base();
    snprintf(version, sizeof version, "%s", base->GetVersionString());
    void **table = (void **)base->GetApi(ORT_API_VERSION_NEEDED);
    if (!table) return throw_error(env, "onnxruntime is older than 1.21: its C API lacks what this needs");
    ort_api = table;
    original_append = API(AppendCudaFn, ORT_APPEND_CUDA_V2);
    if (patch_api_entry(ORT_APPEND_CUDA_V2, (void *)append_cuda_with_options) != 0 || bound_runs_install() != 0)
      return throw_error(env, "could not make onnxruntime's API table writable (mprotect)");
  }

  memcpy(option_text, text, len + 1);
  option_count = split_pairs(option_text, option_keys, option_values, 0);
  napi_value result;
  napi_create_string_utf8(env, version, NAPI_AUTO_LENGTH, &result);
  return result;
}

/* status() → { calls, applied, error, boundSessions, boundRuns }: what the appends since configure() did,
 * the sessions bound now and the runs done bound (bound-runs.c). */
static napi_value status(napi_env env, napi_callback_info info) {
  (void)info;
  napi_value result, calls, applied, error, sessions_value, runs_value;
  uint32_t sessions = 0, runs = 0;
  bound_runs_counts(&sessions, &runs);
  napi_create_object(env, &result);
  napi_create_uint32(env, sessions, &sessions_value);
  napi_create_uint32(env, runs, &runs_value);
  napi_set_named_property(env, result, "boundSessions", sessions_value);
  napi_set_named_property(env, result, "boundRuns", runs_value);
  napi_create_uint32(env, append_calls, &calls);
  napi_create_string_utf8(env, last_applied, NAPI_AUTO_LENGTH, &applied);
  napi_create_string_utf8(env, last_error, NAPI_AUTO_LENGTH, &error);
  napi_set_named_property(env, result, "calls", calls);
  napi_set_named_property(env, result, "applied", applied);
  napi_set_named_property(env, result, "error", error);
  return result;
}

/* bindAll(on): every session created while on is bound, whatever its provider (after configure()). The tests
 * run bound sessions on the CPU provider this way: the same binding, checks and copies, in host memory. */
static napi_value bind_all(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool on = false;
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc != 1 || napi_get_value_bool(env, argv[0], &on) != napi_ok)
    return throw_error(env, "bindAll(on): on must be a boolean");
  if (!ort_api) return throw_error(env, "bindAll: call configure() first");
  bound_runs_for_all(on);
  return NULL;
}

typedef struct {
  napi_env env;
  napi_value result;
} CarriedResult;

/* An ArrayBuffer for one carried input, set on the result under its name. */
static int carried_buffer(void *context, const char *name, size_t bytes, void **data) {
  CarriedResult *r = context;
  napi_value buffer;
  if (napi_create_arraybuffer(r->env, bytes, data, &buffer) != napi_ok) return -1;
  return napi_set_named_property(r->env, r->result, name, buffer) == napi_ok ? 0 : -1;
}

/* carried(id) → { X: ArrayBuffer }: each carried input of the session whose runs are tagged carry:<id>:…, as its
 * last run left it (bound-runs.c). */
static napi_value carried(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  char id[128];
  size_t len = argc == 1 ? string_arg(env, argv[0], id, sizeof id) : (size_t)-1;
  if (len == (size_t)-1 || len == 0 || len >= sizeof id - 1)
    return throw_error(env, "carried(id): id must be a short string (the <id> of the runs' carry:<id>:… tags)");
  if (!ort_api) return throw_error(env, "carried: call configure() first");
  CarriedResult r = {env, NULL};
  napi_create_object(env, &r.result);
  char why[512];
  if (bound_runs_carried(id, carried_buffer, &r, why, sizeof why) != 0) return throw_error(env, why);
  return r.result;
}

NAPI_MODULE_INIT(/* napi_env env, napi_value exports */) {
  napi_property_descriptor props[] = {
      {"configure", NULL, configure, NULL, NULL, NULL, napi_default, NULL},
      {"status", NULL, status, NULL, NULL, NULL, napi_default, NULL},
      {"bindAll", NULL, bind_all, NULL, NULL, NULL, napi_default, NULL},
      {"carried", NULL, carried, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}
