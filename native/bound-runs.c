/*
 * Bound runs: a session's runs through onnxruntime's IO binding, its inputs and outputs in device
 * buffers that stay at one address from run to run.
 *
 * Why: the CUDA provider can capture a whole run as a CUDA graph (enable_cuda_graph=1) and from then on
 * replay it, one launch instead of thousands of kernel launches from the host. A captured graph reads
 * and writes the addresses it was captured with, so onnxruntime allows it only for runs whose inputs
 * and outputs are bound, in device memory, at the same places every time. onnxruntime-node 1.29 runs
 * every session through OrtApi::Run with host tensors and has no IO binding for CUDA. So this file
 * replaces Run in the OrtApi table: a session created with enable_cuda_graph=1 gets device buffers for
 * its inputs and outputs at its first run; each run copies the host inputs into them, runs the binding,
 * and hands the binding host copies of the outputs, which it reads as it always does. Every other
 * session goes to the original Run, untouched.
 *
 * A bound session keeps the inputs, outputs and shapes of its first run: a later run that differs is
 * refused (a captured graph would replay the first shapes). The engine's sessions have fixed shapes.
 *
 * Carried state: an output named carry.<X> beside an input named <X> (same type and shape) is X's next
 * value — a training step's weights and Adam moments. After every run its buffer is copied into X's (on
 * the device), so the state stays on the GPU from step to step instead of travelling both ways. A run
 * tagged carry:<id>:continue (onnxruntime-node's run tag) leaves the carried inputs as the last run left
 * them and ignores their host feeds; any other run (carry:<id>:reset, untagged) copies every input from
 * the host. carry.* outputs the caller does not fetch are bound anyway, so the state moves on every run;
 * bound_runs_carried() reads the state back by <id>. Sessions with carried state are bound whenever the
 * CUDA append saw their options, with CUDA graphs or without.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ort-api.h"

#define MAX_BOUND 64
#define MAX_RANK 8
#define MAX_PENDING 16
#define MAX_CARRY_ID 64

static const char CARRY_PREFIX[] = "carry.";
static const char CARRY_TAG[] = "carry:";

typedef struct {
  char *name;
  void *value; /* device OrtValue, bound */
  void *data;  /* its buffer: fixed for the session's life, looked up once */
  size_t rank;
  int64_t dims[MAX_RANK];
  int type;
  size_t bytes;
  long pair; /* carried: the other side's index (input X <-> output carry.X), else -1 */
} Slot;

typedef struct {
  void *session;
  int cuda; /* device memory (else host memory: the test mode) */
  int device_id;
  pthread_mutex_t lock;
  void *binding;
  void *memory;    /* OrtMemoryInfo of the buffers */
  void *allocator; /* the session's allocator for that memory */
  size_t n_in, n_out;
  size_t n_asked; /* the outputs the first run asked for: out's first; after them the carry.* it did not */
  Slot *in, *out;
  int outputs_fixed; /* the first run's outputs are bound as the place of every later run's */
  int state_set;     /* the carried inputs hold a finished run's outputs: a continue may run */
  char carry_id[MAX_CARRY_ID]; /* <id> of the last carry:<id>:… tag (under table_lock: carried() looks it up) */
} Bound;

/* How a session made from options the CUDA append saw is bound. */
typedef struct {
  int cuda; /* device memory (else host memory: the test mode) */
  int device_id;
  int always; /* bound whatever its outputs (CUDA graphs, the test mode); else only with carried state */
} Placement;

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static Bound *bound[MAX_BOUND];
static struct {
  const void *options; /* from the CUDA append, until their session exists */
  int device_id;
  int graphs;
} pending[MAX_PENDING];
static int for_all;
static uint32_t bound_count, run_count;

static RunFn original_run;
static CreateSessionFn original_create;
static CreateSessionFromArrayFn original_create_from_array;
static ReleaseFn original_release;

/* The CUDA runtime the provider loaded: cudaMemcpy for the copies (onnxruntime's C API has none). */
typedef int (*CudaMemcpyFn)(void *dst, const void *src, size_t n, int kind);
typedef int (*CudaSetDeviceFn)(int device);
typedef const char *(*CudaErrorStringFn)(int error);
typedef int (*CudaStreamSynchronizeFn)(void *stream);
static CudaMemcpyFn cuda_memcpy;
static CudaSetDeviceFn cuda_set_device;
static CudaErrorStringFn cuda_error_string;
static CudaStreamSynchronizeFn cuda_stream_synchronize;
/* cudaMemcpyKind's values. */
typedef enum { TO_DEVICE = 1, TO_HOST = 2, ON_DEVICE = 3 } CopyKind;

__attribute__((format(printf, 1, 2))) static Status fail(const char *fmt, ...) {
  char message[512];
  va_list args;
  va_start(args, fmt);
  vsnprintf(message, sizeof message, fmt, args);
  va_end(args);
  return API(CreateStatusFn, ORT_CREATE_STATUS)(ORT_FAIL, message);
}

static int load_cuda_runtime(void) {
  if (cuda_memcpy) return 0;
  static const char *names[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so"};
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    void *lib = dlopen(names[i], RTLD_NOW | RTLD_NOLOAD);
    if (!lib) continue;
    cuda_set_device = (CudaSetDeviceFn)dlsym(lib, "cudaSetDevice");
    cuda_error_string = (CudaErrorStringFn)dlsym(lib, "cudaGetErrorString");
    cuda_stream_synchronize = (CudaStreamSynchronizeFn)dlsym(lib, "cudaStreamSynchronize");
    cuda_memcpy = (CudaMemcpyFn)dlsym(lib, "cudaMemcpy");
    if (cuda_memcpy && cuda_set_device && cuda_error_string && cuda_stream_synchronize) return 0;
    cuda_memcpy = NULL;
  }
  return -1;
}

/* Copies between host and the session's buffers, or between its buffers; NULL or onnxruntime's kind of error. */
static Status copy(const Bound *b, void *dst, const void *src, size_t n, CopyKind kind) {
  if (!b->cuda) {
    memcpy(dst, src, n);
    return NULL;
  }
  int err = cuda_memcpy(dst, src, n, kind);
  return err ? fail("bound run: cudaMemcpy failed: %s", cuda_error_string(err)) : NULL;
}

/* Waits for the copies on the legacy stream, which the provider's (non-blocking) stream does not wait for:
 * a device-to-device cudaMemcpy returns before it is done, so the next run could read the carried inputs
 * half copied (and see bound_run for the host's). */
static Status settle(const Bound *b) {
  int err = b->cuda ? cuda_stream_synchronize(NULL) : 0;
  return err ? fail("bound run: cudaStreamSynchronize failed: %s", cuda_error_string(err)) : NULL;
}

static size_t element_bytes(int type) {
  switch (type) {
    case 2: case 3: case 9: return 1;    /* uint8, int8, bool */
    case 4: case 5: case 10: case 16: return 2; /* uint16, int16, float16, bfloat16 */
    case 1: case 6: case 12: return 4;   /* float, int32, uint32 */
    case 7: case 11: case 13: return 8;  /* int64, double, uint64 */
    default: return 0;                   /* strings and the rest: not bound */
  }
}

/* A tensor's element type, shape and size in bytes. */
static Status describe(const void *value, Slot *s) {
  void *info = NULL;
  Status st = API(GetTensorTypeAndShapeFn, ORT_GET_TENSOR_TYPE_AND_SHAPE)(value, &info);
  if (!st) st = API(GetTensorElementTypeFn, ORT_GET_TENSOR_ELEMENT_TYPE)(info, &s->type);
  if (!st) st = API(GetDimensionsCountFn, ORT_GET_DIMENSIONS_COUNT)(info, &s->rank);
  if (!st && s->rank > MAX_RANK) st = fail("bound run: a tensor of rank %s", "above 8");
  if (!st) st = API(GetDimensionsFn, ORT_GET_DIMENSIONS)(info, s->dims, s->rank);
  if (info) API(ReleaseFn, ORT_RELEASE_TENSOR_TYPE_AND_SHAPE_INFO)(info);
  if (st) return st;
  size_t bytes = element_bytes(s->type);
  if (!bytes) return fail("bound run: tensors of element type %s cannot be bound", "other than numbers");
  for (size_t i = 0; i < s->rank; i++) bytes *= (size_t)s->dims[i];
  s->bytes = bytes;
  return NULL;
}

static void free_slots(Slot *slots, size_t n) {
  if (!slots) return;
  for (size_t i = 0; i < n; i++) {
    free(slots[i].name);
    if (slots[i].value) API(ReleaseFn, ORT_RELEASE_VALUE)(slots[i].value);
  }
  free(slots);
}

/* Back to a session bound but never run: what the first run sets up. */
static void clear(Bound *b) {
  free_slots(b->in, b->n_in);
  free_slots(b->out, b->n_out);
  b->in = b->out = NULL;
  b->n_in = b->n_out = b->n_asked = 0;
  b->outputs_fixed = b->state_set = 0;
  if (b->binding) API(ReleaseFn, ORT_RELEASE_IO_BINDING)(b->binding);
  if (b->allocator) API(ReleaseFn, ORT_RELEASE_ALLOCATOR)(b->allocator);
  if (b->memory) API(ReleaseFn, ORT_RELEASE_MEMORY_INFO)(b->memory);
  b->binding = b->allocator = b->memory = NULL;
}

static void free_names(char **names, size_t n) {
  if (!names) return;
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
}

/* The session's input (or output) names, copied; free with free_names. */
static Status session_names(const void *session, int outputs, char ***names, size_t *count) {
  void *host = NULL;
  size_t n = 0;
  Status st = API(GetAllocatorFn, ORT_GET_ALLOCATOR_WITH_DEFAULT_OPTIONS)(&host);
  if (!st)
    st = API(SessionGetCountFn, outputs ? ORT_SESSION_GET_OUTPUT_COUNT : ORT_SESSION_GET_INPUT_COUNT)(session, &n);
  if (st) return st;
  char **list = calloc(n ? n : 1, sizeof(char *));
  if (!list) return fail("bound run: %s", "out of host memory");
  for (size_t i = 0; i < n && !st; i++) {
    char *name = NULL;
    st = API(SessionGetNameFn, outputs ? ORT_SESSION_GET_OUTPUT_NAME : ORT_SESSION_GET_INPUT_NAME)(session, i, host,
                                                                                                 &name);
    if (st) break;
    list[i] = strdup(name);
    API(AllocatorFreeFn, ORT_ALLOCATOR_FREE)(host, name);
    if (!list[i]) st = fail("bound run: %s", "out of host memory");
  }
  if (st) {
    free_names(list, n);
    return st;
  }
  *names = list;
  *count = n;
  return NULL;
}

static long index_of(const char *const *names, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(names[i], name) == 0) return (long)i;
  return -1;
}

/* X for an output named carry.X, else NULL. */
static const char *carried_input(const char *output) {
  size_t n = sizeof CARRY_PREFIX - 1;
  return strncmp(output, CARRY_PREFIX, n) == 0 ? output + n : NULL;
}

/* Whether the session has an output carry.X beside an input X. */
static Status has_carried_state(const void *session, int *yes) {
  char **ins = NULL, **outs = NULL;
  size_t n_ins = 0, n_outs = 0;
  Status st = session_names(session, 0, &ins, &n_ins);
  if (!st) st = session_names(session, 1, &outs, &n_outs);
  *yes = 0;
  for (size_t i = 0; i < n_outs && !st && !*yes; i++) {
    const char *x = carried_input(outs[i]);
    *yes = x && index_of((const char *const *)ins, n_ins, x) >= 0;
  }
  free_names(ins, n_ins);
  free_names(outs, n_outs);
  return st;
}

/* A carry.X output of the session whose X the run feeds but which the run does not ask for. */
static int unasked_carry(const char *output, const char *const *input_names, size_t n_in,
                         const char *const *output_names, size_t n_out) {
  const char *x = carried_input(output);
  return x && index_of(input_names, n_in, x) >= 0 && index_of(output_names, n_out, output) < 0;
}

/* The output slots: those the run asks for, then the carry.* it does not (bound too, so that the state moves on
 * every run whatever the caller fetches). */
static Status name_outputs(Bound *b, const char *const *input_names, size_t n_in, const char *const *output_names,
                           size_t n_out) {
  char **all = NULL;
  size_t n_all = 0, n_extra = 0;
  Status st = session_names(b->session, 1, &all, &n_all);
  if (st) return st;
  for (size_t i = 0; i < n_all; i++) n_extra += unasked_carry(all[i], input_names, n_in, output_names, n_out);
  b->out = calloc(n_out + n_extra ? n_out + n_extra : 1, sizeof(Slot));
  if (!b->out) st = fail("bound run: %s", "out of host memory");
  if (!st) {
    b->n_out = n_out + n_extra;
    b->n_asked = n_out;
    for (size_t i = 0; i < n_out; i++) b->out[i].name = strdup(output_names[i]);
    for (size_t i = 0, j = n_out; i < n_all; i++)
      if (unasked_carry(all[i], input_names, n_in, output_names, n_out)) {
        b->out[j++].name = all[i];
        all[i] = NULL;
      }
  }
  free_names(all, n_all);
  return st;
}

/* Each output carry.X and input X know each other. */
static void pair_carried(Bound *b) {
  for (size_t i = 0; i < b->n_in; i++) b->in[i].pair = -1;
  for (size_t j = 0; j < b->n_out; j++) {
    Slot *o = &b->out[j];
    const char *x = carried_input(o->name);
    o->pair = -1;
    for (size_t i = 0; x && i < b->n_in && o->pair < 0; i++)
      if (strcmp(b->in[i].name, x) == 0) {
        o->pair = (long)i;
        b->in[i].pair = (long)j;
      }
  }
}

/* The first run: a buffer per input in the session's device memory, bound; outputs bound to the device. */
static Status set_up(Bound *b, const char *const *input_names, const void *const *inputs, size_t n_in,
                     const char *const *output_names, size_t n_out) {
  if (b->cuda && load_cuda_runtime() != 0)
    return fail("bound run: %s", "the CUDA runtime (libcudart) is not loaded in this process");
  Status st = API(CreateIoBindingFn, ORT_CREATE_IO_BINDING)(b->session, &b->binding);
  if (!st)
    st = API(CreateMemoryInfoFn, ORT_CREATE_MEMORY_INFO)(b->cuda ? "Cuda" : "Cpu", ORT_ARENA_ALLOCATOR,
                                                         b->cuda ? b->device_id : 0, ORT_MEM_TYPE_DEFAULT,
                                                         &b->memory);
  if (!st) st = API(CreateAllocatorFn, ORT_CREATE_ALLOCATOR)(b->session, b->memory, &b->allocator);
  if (!st) st = name_outputs(b, input_names, n_in, output_names, n_out);
  if (st) return st;
  b->in = calloc(n_in ? n_in : 1, sizeof(Slot));
  if (!b->in) return fail("bound run: %s", "out of host memory");
  b->n_in = n_in;
  for (size_t i = 0; i < n_in && !st; i++) {
    Slot *s = &b->in[i];
    s->name = strdup(input_names[i]);
    st = describe(inputs[i], s);
    if (!st)
      st = API(CreateTensorAsOrtValueFn, ORT_CREATE_TENSOR_AS_ORT_VALUE)(b->allocator, s->dims, s->rank, s->type,
                                                                        &s->value);
    if (!st) st = API(GetTensorMutableDataFn, ORT_GET_TENSOR_MUTABLE_DATA)(s->value, &s->data);
    if (!st) st = API(BindValueFn, ORT_BIND_INPUT)(b->binding, s->name, s->value);
  }
  for (size_t i = 0; i < b->n_out && !st; i++)
    st = API(BindOutputToDeviceFn, ORT_BIND_OUTPUT_TO_DEVICE)(b->binding, b->out[i].name, b->memory);
  if (!st) pair_carried(b);
  return st;
}

static int same_type_and_shape(const Slot *a, const Slot *b) {
  return a->type == b->type && a->rank == b->rank && memcmp(a->dims, b->dims, a->rank * sizeof(int64_t)) == 0;
}

/* A later run must name the same inputs and outputs, with the same shapes, as the first. */
static Status check_same(const Bound *b, const char *const *input_names, const void *const *inputs, size_t n_in,
                         const char *const *output_names, size_t n_out) {
  if (n_in != b->n_in || n_out != b->n_asked)
    return fail("bound run: %s", "a bound session runs with the inputs and outputs of its first run");
  for (size_t i = 0; i < n_out; i++)
    if (strcmp(output_names[i], b->out[i].name) != 0)
      return fail("bound run: output %s is not the first run's", output_names[i]);
  for (size_t i = 0; i < n_in; i++) {
    const Slot *s = &b->in[i];
    Slot now = {0};
    if (strcmp(input_names[i], s->name) != 0) return fail("bound run: input %s is not the first run's", input_names[i]);
    Status st = describe(inputs[i], &now);
    if (st) return st;
    if (!same_type_and_shape(&now, s))
      return fail("bound run: input %s changed its type or shape since the session's first run (a bound session "
                  "keeps one shape: CUDA graphs replay the first)",
                  s->name);
  }
  return NULL;
}

/* After the first run: its outputs (allocated by onnxruntime on the device) become every run's outputs. */
static Status fix_outputs(Bound *b) {
  void *host = NULL;
  void **values = NULL;
  size_t count = 0;
  Status st = API(GetAllocatorFn, ORT_GET_ALLOCATOR_WITH_DEFAULT_OPTIONS)(&host);
  if (!st) st = API(GetBoundOutputValuesFn, ORT_GET_BOUND_OUTPUT_VALUES)(b->binding, host, &values, &count);
  if (st) return st;
  if (count != b->n_out) st = fail("bound run: %s", "onnxruntime returned another number of outputs than bound");
  for (size_t i = 0; i < count; i++) {
    if (!st) {
      b->out[i].value = values[i];
      st = describe(values[i], &b->out[i]);
      if (!st) st = API(GetTensorMutableDataFn, ORT_GET_TENSOR_MUTABLE_DATA)(values[i], &b->out[i].data);
    } else {
      API(ReleaseFn, ORT_RELEASE_VALUE)(values[i]);
    }
  }
  API(AllocatorFreeFn, ORT_ALLOCATOR_FREE)(host, values);
  if (st) return st;
  API(ClearBoundOutputsFn, ORT_CLEAR_BOUND_OUTPUTS)(b->binding);
  for (size_t i = 0; i < b->n_out && !st; i++)
    st = API(BindValueFn, ORT_BIND_OUTPUT)(b->binding, b->out[i].name, b->out[i].value);
  if (!st) b->outputs_fixed = 1;
  return st;
}

/* A carried output goes into its input's buffer as it is: the same element type and shape. */
static Status check_carried(const Bound *b) {
  for (size_t j = 0; j < b->n_out; j++) {
    const Slot *o = &b->out[j];
    if (o->pair >= 0 && !same_type_and_shape(o, &b->in[o->pair]))
      return fail("bound run: output %s cannot carry into input %s: their element types or shapes differ", o->name,
                  b->in[o->pair].name);
  }
  return NULL;
}

/* Each carried output into its input's buffer, where the next run (a continue) finds it. */
static Status carry(Bound *b) {
  Status st = NULL;
  int copied = 0;
  b->state_set = 0; /* a copy that fails half way leaves no state to continue from */
  for (size_t j = 0; j < b->n_out && !st; j++) {
    const Slot *o = &b->out[j];
    if (o->pair < 0) continue;
    st = copy(b, b->in[o->pair].data, o->data, o->bytes, ON_DEVICE);
    copied = 1;
  }
  if (!st && copied) st = settle(b);
  if (!st) b->state_set = 1;
  return st;
}

/* Host tensors of the outputs the caller asked for, for the caller of Run. */
static Status hand_out(const Bound *b, void **outputs) {
  void *host = NULL;
  Status st = API(GetAllocatorFn, ORT_GET_ALLOCATOR_WITH_DEFAULT_OPTIONS)(&host);
  for (size_t i = 0; i < b->n_asked && !st; i++) {
    const Slot *s = &b->out[i];
    void *value = NULL, *dst = NULL;
    st = API(CreateTensorAsOrtValueFn, ORT_CREATE_TENSOR_AS_ORT_VALUE)(host, s->dims, s->rank, s->type, &value);
    if (!st) st = API(GetTensorMutableDataFn, ORT_GET_TENSOR_MUTABLE_DATA)(value, &dst);
    if (!st) st = copy(b, dst, s->data, s->bytes, TO_HOST);
    if (st && value) API(ReleaseFn, ORT_RELEASE_VALUE)(value);
    if (!st) outputs[i] = value;
  }
  if (st)
    for (size_t i = 0; i < b->n_asked; i++)
      if (outputs[i]) {
        API(ReleaseFn, ORT_RELEASE_VALUE)(outputs[i]);
        outputs[i] = NULL;
      }
  return st;
}

/* `continuing`: a carry:<id>:continue run (`id`), which keeps the carried inputs the last run left. */
static Status bound_run(Bound *b, int continuing, const char *id, const void *run_options,
                        const char *const *input_names, const void *const *inputs, size_t n_in,
                        const char *const *output_names, size_t n_out, void **outputs) {
  for (size_t i = 0; i < n_out; i++)
    if (outputs[i]) return fail("bound run: %s", "a bound session returns its own output tensors");
  if (continuing && !b->state_set)
    return fail("bound run: carry:%s:continue before any run set the session's carried state (run it tagged "
                "carry:%s:reset first)",
                id, id);
  Status st = NULL;
  if (!b->binding) {
    st = set_up(b, input_names, inputs, n_in, output_names, n_out);
    if (st) {
      clear(b);
      return st;
    }
  } else {
    st = check_same(b, input_names, inputs, n_in, output_names, n_out);
    if (st) return st;
  }
  if (b->cuda) {
    int err = cuda_set_device(b->device_id);
    if (err) return fail("bound run: cudaSetDevice failed: %s", cuda_error_string(err));
  }
  if (!continuing) b->state_set = 0; /* the host's values replace the carried ones */
  for (size_t i = 0; i < n_in && !st; i++) {
    void *src = NULL;
    if (continuing && b->in[i].pair >= 0) continue; /* the last run's output is there; the feed only stands in */
    st = API(GetTensorMutableDataFn, ORT_GET_TENSOR_MUTABLE_DATA)((void *)inputs[i], &src);
    if (!st) st = copy(b, b->in[i].data, src, b->in[i].bytes, TO_DEVICE);
  }
  /* From pageable host memory cudaMemcpy returns once the bytes are staged, and the DMA to the device may
   * still be on the legacy stream when the provider's non-blocking stream starts reading them. */
  if (!st) st = settle(b);
  if (!st) st = API(RunWithBindingFn, ORT_RUN_WITH_BINDING)(b->session, run_options, b->binding);
  if (!st && !b->outputs_fixed) {
    st = fix_outputs(b);
    if (!st) st = check_carried(b);
    if (st) clear(b); /* the next run sets up anew (and fails the same way when the model is at fault) */
  }
  if (!st) st = carry(b);
  if (!st) st = hand_out(b, outputs);
  if (!st) __atomic_add_fetch(&run_count, 1, __ATOMIC_RELAXED);
  return st;
}

static Bound *find(const void *session) {
  pthread_mutex_lock(&table_lock);
  Bound *found = NULL;
  for (int i = 0; i < MAX_BOUND && !found; i++)
    if (bound[i] && bound[i]->session == session) found = bound[i];
  pthread_mutex_unlock(&table_lock);
  return found;
}

/* A run tag carry:<id>:continue or carry:<id>:reset: <id> into `id` and whether it continues. Any other tag,
 * or none, leaves `id` empty: the run copies every input from the host. */
static Status read_tag(const void *run_options, char *id, int *continuing) {
  const char *tag = NULL;
  Status st = run_options ? API(RunOptionsGetRunTagFn, ORT_RUN_OPTIONS_GET_RUN_TAG)(run_options, &tag) : NULL;
  size_t prefix = sizeof CARRY_TAG - 1;
  if (st || !tag || strncmp(tag, CARRY_TAG, prefix) != 0) return st;
  const char *end = strrchr(tag + prefix, ':');
  if (!end || (strcmp(end, ":continue") != 0 && strcmp(end, ":reset") != 0)) return NULL;
  size_t len = (size_t)(end - (tag + prefix));
  if (len == 0 || len >= MAX_CARRY_ID) return fail("bound run: run tag %s: its id has 1 to 63 characters", tag);
  memcpy(id, tag + prefix, len);
  id[len] = '\0';
  *continuing = strcmp(end, ":continue") == 0;
  return NULL;
}

/* The session's carry id, for carried(), which looks it up under the table's lock. */
static void remember_id(Bound *b, const char *id) {
  pthread_mutex_lock(&table_lock);
  snprintf(b->carry_id, sizeof b->carry_id, "%s", id);
  pthread_mutex_unlock(&table_lock);
}

static Status run_hook(void *session, const void *run_options, const char *const *input_names,
                       const void *const *inputs, size_t n_in, const char *const *output_names, size_t n_out,
                       void **outputs) {
  Bound *b = bound_count ? find(session) : NULL;
  if (!b) return original_run(session, run_options, input_names, inputs, n_in, output_names, n_out, outputs);
  char id[MAX_CARRY_ID] = "";
  int continuing = 0;
  Status st = read_tag(run_options, id, &continuing);
  if (st) return st;
  if (*id) remember_id(b, id);
  pthread_mutex_lock(&b->lock);
  st = bound_run(b, continuing, id, run_options, input_names, inputs, n_in, output_names, n_out, outputs);
  pthread_mutex_unlock(&b->lock);
  return st;
}

/* Whether a session made from `options` may be bound, and how. */
static int placement(const void *options, Placement *p) {
  pthread_mutex_lock(&table_lock);
  int yes = 0;
  for (int i = 0; i < MAX_PENDING && !yes; i++)
    if (pending[i].options == options) {
      /* One session per appended options: the binding makes new options for every session. */
      pending[i].options = NULL;
      *p = (Placement){.cuda = 1, .device_id = pending[i].device_id, .always = pending[i].graphs || for_all};
      yes = 1;
    }
  if (!yes && for_all) {
    *p = (Placement){.cuda = 0, .device_id = 0, .always = 1};
    yes = 1;
  }
  pthread_mutex_unlock(&table_lock);
  return yes;
}

static Status track(void *session, int cuda, int device_id) {
  Bound *b = calloc(1, sizeof *b);
  if (!b) return fail("bound run: %s", "out of host memory");
  b->session = session;
  b->cuda = cuda;
  b->device_id = device_id;
  pthread_mutex_init(&b->lock, NULL);
  pthread_mutex_lock(&table_lock);
  int slot = -1;
  for (int i = 0; i < MAX_BOUND && slot < 0; i++)
    if (!bound[i]) slot = i;
  if (slot >= 0) {
    bound[slot] = b;
    bound_count++;
  }
  pthread_mutex_unlock(&table_lock);
  if (slot >= 0) return NULL;
  pthread_mutex_destroy(&b->lock);
  free(b);
  return fail("bound run: more than %s bound sessions at once", "64");
}

/* A session that cannot be tracked is released again: it would replay without its inputs. */
static Status after_create(Status st, void **session, const void *options) {
  Placement p;
  int expected = placement(options, &p); /* cleared even when the creation failed */
  if (st || !expected) return st;
  int carries = 0;
  if (!p.always) st = has_carried_state(*session, &carries);
  if (!st && (p.always || carries)) st = track(*session, p.cuda, p.device_id);
  if (st) {
    original_release(*session);
    *session = NULL;
  }
  return st;
}

static Status create_hook(const void *env, const char *path, const void *options, void **session) {
  return after_create(original_create(env, path, options, session), session, options);
}

static Status create_from_array_hook(const void *env, const void *data, size_t length, const void *options,
                                     void **session) {
  return after_create(original_create_from_array(env, data, length, options, session), session, options);
}

static void release_hook(void *session) {
  pthread_mutex_lock(&table_lock);
  Bound *b = NULL;
  for (int i = 0; i < MAX_BOUND && !b; i++)
    if (bound[i] && bound[i]->session == session) {
      b = bound[i];
      bound[i] = NULL;
      bound_count--;
    }
  pthread_mutex_unlock(&table_lock);
  if (b) {
    /* The buffers come from the session's allocator: they go before it does. */
    pthread_mutex_lock(&b->lock);
    clear(b);
    pthread_mutex_unlock(&b->lock);
    pthread_mutex_destroy(&b->lock);
    free(b);
  }
  original_release(session);
}

int bound_runs_install(void) {
  if (original_run) return 0;
  original_run = API(RunFn, ORT_RUN);
  original_create = API(CreateSessionFn, ORT_CREATE_SESSION);
  original_create_from_array = API(CreateSessionFromArrayFn, ORT_CREATE_SESSION_FROM_ARRAY);
  original_release = API(ReleaseFn, ORT_RELEASE_SESSION);
  if (patch_api_entry(ORT_RUN, (void *)run_hook) != 0) return -1;
  if (patch_api_entry(ORT_CREATE_SESSION, (void *)create_hook) != 0) return -1;
  if (patch_api_entry(ORT_CREATE_SESSION_FROM_ARRAY, (void *)create_from_array_hook) != 0) return -1;
  return patch_api_entry(ORT_RELEASE_SESSION, (void *)release_hook);
}

void bound_runs_expect(const void *session_options, int device_id, int graphs) {
  pthread_mutex_lock(&table_lock);
  int slot = 0;
  for (int i = 0; i < MAX_PENDING; i++)
    if (!pending[i].options || pending[i].options == session_options) {
      slot = i;
      break;
    }
  /* A full list (options whose session was never created) gives up its first entry. */
  pending[slot].options = session_options;
  pending[slot].device_id = device_id;
  pending[slot].graphs = graphs;
  pthread_mutex_unlock(&table_lock);
}

void bound_runs_for_all(int on) {
  pthread_mutex_lock(&table_lock);
  for_all = on;
  pthread_mutex_unlock(&table_lock);
}

void bound_runs_counts(uint32_t *sessions, uint32_t *runs) {
  pthread_mutex_lock(&table_lock);
  *sessions = bound_count;
  pthread_mutex_unlock(&table_lock);
  *runs = __atomic_load_n(&run_count, __ATOMIC_RELAXED);
}

/* The carried inputs into buffers from `make`: the state the last finished run left. Under the Bound's lock. */
static int copy_carried(const Bound *b, const char *id, CarriedBufferFn make, void *context, char *why,
                        size_t why_size) {
  if (!b->state_set) {
    snprintf(why, why_size, "carried(%s): no run of that session has set its carried state", id);
    return -1;
  }
  int err = b->cuda ? cuda_set_device(b->device_id) : 0;
  if (err) {
    snprintf(why, why_size, "carried(%s): cudaSetDevice failed: %s", id, cuda_error_string(err));
    return -1;
  }
  for (size_t i = 0; i < b->n_in; i++) {
    const Slot *s = &b->in[i];
    void *dst = NULL;
    if (s->pair < 0) continue;
    if (make(context, s->name, s->bytes, &dst) != 0) {
      snprintf(why, why_size, "carried(%s): no host buffer for %s", id, s->name);
      return -1;
    }
    Status st = copy(b, dst, s->data, s->bytes, TO_HOST);
    if (st) {
      snprintf(why, why_size, "carried(%s): %s", id, API(GetErrorMessageFn, ORT_GET_ERROR_MESSAGE)(st));
      API(ReleaseStatusFn, ORT_RELEASE_STATUS)(st);
      return -1;
    }
  }
  return 0;
}

int bound_runs_carried(const char *id, CarriedBufferFn make, void *context, char *why, size_t why_size) {
  pthread_mutex_lock(&table_lock);
  Bound *b = NULL;
  for (int i = 0; i < MAX_BOUND && !b && *id; i++)
    if (bound[i] && strcmp(bound[i]->carry_id, id) == 0) b = bound[i];
  /* Locked before the table is let go: a release takes the table, then the Bound, so b outlives the copy. (A run
   * of b in flight holds the table up meanwhile; runs never take the table while they hold their Bound.) */
  if (b) pthread_mutex_lock(&b->lock);
  pthread_mutex_unlock(&table_lock);
  if (!b) {
    snprintf(why, why_size, "carried(%s): no bound session has run with the tag carry:%s:reset or :continue", id,
             id);
    return -1;
  }
  int result = copy_carried(b, id, make, context, why, why_size);
  pthread_mutex_unlock(&b->lock);
  return result;
}
