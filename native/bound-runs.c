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
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ort-api.h"

#define MAX_BOUND 64
#define MAX_RANK 8
#define MAX_PENDING 16

typedef struct {
  char *name;
  void *value; /* device OrtValue, bound */
  void *data;  /* its buffer: fixed for the session's life, looked up once */
  size_t rank;
  int64_t dims[MAX_RANK];
  int type;
  size_t bytes;
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
  Slot *in, *out;
  int outputs_fixed; /* the first run's outputs are bound as the place of every later run's */
} Bound;

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static Bound *bound[MAX_BOUND];
static const void *pending_options[MAX_PENDING]; /* from the CUDA append, until their session exists */
static int pending_device[MAX_PENDING];
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
static CudaMemcpyFn cuda_memcpy;
static CudaSetDeviceFn cuda_set_device;
static CudaErrorStringFn cuda_error_string;
enum { CUDA_HOST_TO_DEVICE = 1, CUDA_DEVICE_TO_HOST = 2 };

static Status fail(const char *fmt, const char *detail) {
  char message[512];
  snprintf(message, sizeof message, fmt, detail);
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
    cuda_memcpy = (CudaMemcpyFn)dlsym(lib, "cudaMemcpy");
    if (cuda_memcpy && cuda_set_device && cuda_error_string) return 0;
    cuda_memcpy = NULL;
  }
  return -1;
}

/* Copies between host and the session's buffers; NULL or onnxruntime's kind of error. */
static Status copy(const Bound *b, void *dst, const void *src, size_t n, int to_device) {
  if (!b->cuda) {
    memcpy(dst, src, n);
    return NULL;
  }
  int err = cuda_memcpy(dst, src, n, to_device ? CUDA_HOST_TO_DEVICE : CUDA_DEVICE_TO_HOST);
  return err ? fail("bound run: cudaMemcpy failed: %s", cuda_error_string(err)) : NULL;
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
  b->n_in = b->n_out = 0;
  b->outputs_fixed = 0;
  if (b->binding) API(ReleaseFn, ORT_RELEASE_IO_BINDING)(b->binding);
  if (b->allocator) API(ReleaseFn, ORT_RELEASE_ALLOCATOR)(b->allocator);
  if (b->memory) API(ReleaseFn, ORT_RELEASE_MEMORY_INFO)(b->memory);
  b->binding = b->allocator = b->memory = NULL;
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
  if (st) return st;
  b->in = calloc(n_in ? n_in : 1, sizeof(Slot));
  b->out = calloc(n_out ? n_out : 1, sizeof(Slot));
  if (!b->in || !b->out) return fail("bound run: %s", "out of host memory");
  b->n_in = n_in;
  b->n_out = n_out;
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
  for (size_t i = 0; i < n_out && !st; i++) {
    b->out[i].name = strdup(output_names[i]);
    st = API(BindOutputToDeviceFn, ORT_BIND_OUTPUT_TO_DEVICE)(b->binding, b->out[i].name, b->memory);
  }
  return st;
}

/* A later run must name the same inputs and outputs, with the same shapes, as the first. */
static Status check_same(const Bound *b, const char *const *input_names, const void *const *inputs, size_t n_in,
                         const char *const *output_names, size_t n_out) {
  if (n_in != b->n_in || n_out != b->n_out)
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
    if (now.type != s->type || now.rank != s->rank || memcmp(now.dims, s->dims, s->rank * sizeof(int64_t)) != 0)
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

/* Host tensors of the outputs, for the caller of Run. */
static Status hand_out(const Bound *b, void **outputs) {
  void *host = NULL;
  Status st = API(GetAllocatorFn, ORT_GET_ALLOCATOR_WITH_DEFAULT_OPTIONS)(&host);
  for (size_t i = 0; i < b->n_out && !st; i++) {
    const Slot *s = &b->out[i];
    void *value = NULL, *dst = NULL;
    st = API(CreateTensorAsOrtValueFn, ORT_CREATE_TENSOR_AS_ORT_VALUE)(host, s->dims, s->rank, s->type, &value);
    if (!st) st = API(GetTensorMutableDataFn, ORT_GET_TENSOR_MUTABLE_DATA)(value, &dst);
    if (!st) st = copy(b, dst, s->data, s->bytes, 0);
    if (st && value) API(ReleaseFn, ORT_RELEASE_VALUE)(value);
    if (!st) outputs[i] = value;
  }
  if (st)
    for (size_t i = 0; i < b->n_out; i++)
      if (outputs[i]) {
        API(ReleaseFn, ORT_RELEASE_VALUE)(outputs[i]);
        outputs[i] = NULL;
      }
  return st;
}

static Status bound_run(Bound *b, const void *run_options, const char *const *input_names,
                        const void *const *inputs, size_t n_in, const char *const *output_names, size_t n_out,
                        void **outputs) {
  for (size_t i = 0; i < n_out; i++)
    if (outputs[i]) return fail("bound run: %s", "a bound session returns its own output tensors");
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
  for (size_t i = 0; i < n_in && !st; i++) {
    void *src = NULL;
    st = API(GetTensorMutableDataFn, ORT_GET_TENSOR_MUTABLE_DATA)((void *)inputs[i], &src);
    if (!st) st = copy(b, b->in[i].data, src, b->in[i].bytes, 1);
  }
  if (!st) st = API(RunWithBindingFn, ORT_RUN_WITH_BINDING)(b->session, run_options, b->binding);
  if (!st && !b->outputs_fixed) st = fix_outputs(b);
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

static Status run_hook(void *session, const void *run_options, const char *const *input_names,
                       const void *const *inputs, size_t n_in, const char *const *output_names, size_t n_out,
                       void **outputs) {
  Bound *b = bound_count ? find(session) : NULL;
  if (!b) return original_run(session, run_options, input_names, inputs, n_in, output_names, n_out, outputs);
  pthread_mutex_lock(&b->lock);
  Status st = bound_run(b, run_options, input_names, inputs, n_in, output_names, n_out, outputs);
  pthread_mutex_unlock(&b->lock);
  return st;
}

/* Whether a session made from `options` is bound, and on which device (-1: host memory). */
static int takes_binding(const void *options, int *cuda, int *device_id) {
  pthread_mutex_lock(&table_lock);
  int yes = 0;
  for (int i = 0; i < MAX_PENDING && !yes; i++)
    if (pending_options[i] == options) {
      /* One session per appended options: the binding makes new options for every session. */
      pending_options[i] = NULL;
      *cuda = 1;
      *device_id = pending_device[i];
      yes = 1;
    }
  if (!yes && for_all) {
    *cuda = 0;
    *device_id = 0;
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
  int cuda = 0, device_id = 0;
  int take = takes_binding(options, &cuda, &device_id); /* cleared even when the creation failed */
  if (st || !take) return st;
  st = track(*session, cuda, device_id);
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

void bound_runs_expect(const void *session_options, int device_id) {
  pthread_mutex_lock(&table_lock);
  int slot = 0;
  for (int i = 0; i < MAX_PENDING; i++)
    if (!pending_options[i] || pending_options[i] == session_options) {
      slot = i;
      break;
    }
  /* A full list (options whose session was never created) gives up its first entry. */
  pending_options[slot] = session_options;
  pending_device[slot] = device_id;
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
