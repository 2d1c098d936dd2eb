/*
 * What the add-on uses of onnxruntime's C API, without onnxruntime's headers: positions in the OrtApi
 * table (a struct of function pointers; offsetof(OrtApi, f) / sizeof(void*)) and the functions' types.
 *
 * The table only ever grows at its end (onnxruntime's ABI promise), so these positions hold in every
 * onnxruntime from API version 21 on; test/engine/runtime/cuda-options.test.ts checks each against
 * onnxruntime_c_api.h where that header is installed.
 */
#ifndef PHOTO_EDIT_ORT_API_H
#define PHOTO_EDIT_ORT_API_H

#include <stddef.h>
#include <stdint.h>

enum {
  ORT_CREATE_STATUS = 0,
  ORT_GET_ERROR_MESSAGE = 2,
  ORT_CREATE_SESSION = 7,
  ORT_CREATE_SESSION_FROM_ARRAY = 8,
  ORT_RUN = 9,
  ORT_SESSION_GET_INPUT_COUNT = 30,
  ORT_SESSION_GET_OUTPUT_COUNT = 31,
  ORT_SESSION_GET_INPUT_NAME = 36,
  ORT_SESSION_GET_OUTPUT_NAME = 37,
  ORT_RUN_OPTIONS_GET_RUN_TAG = 45,
  ORT_CREATE_TENSOR_AS_ORT_VALUE = 48,
  ORT_GET_TENSOR_MUTABLE_DATA = 51,
  ORT_GET_TENSOR_ELEMENT_TYPE = 60,
  ORT_GET_DIMENSIONS_COUNT = 61,
  ORT_GET_DIMENSIONS = 62,
  ORT_GET_TENSOR_TYPE_AND_SHAPE = 65,
  ORT_CREATE_MEMORY_INFO = 68,
  ORT_ALLOCATOR_FREE = 76,
  ORT_GET_ALLOCATOR_WITH_DEFAULT_OPTIONS = 78,
  ORT_RELEASE_STATUS = 93,
  ORT_RELEASE_MEMORY_INFO = 94,
  ORT_RELEASE_SESSION = 95,
  ORT_RELEASE_VALUE = 96,
  ORT_RELEASE_TENSOR_TYPE_AND_SHAPE_INFO = 99,
  ORT_CREATE_ALLOCATOR = 131,
  ORT_RELEASE_ALLOCATOR = 132,
  ORT_RUN_WITH_BINDING = 133,
  ORT_CREATE_IO_BINDING = 134,
  ORT_RELEASE_IO_BINDING = 135,
  ORT_BIND_INPUT = 136,
  ORT_BIND_OUTPUT = 137,
  ORT_BIND_OUTPUT_TO_DEVICE = 138,
  ORT_GET_BOUND_OUTPUT_VALUES = 140,
  ORT_CLEAR_BOUND_OUTPUTS = 142,
  ORT_APPEND_CUDA_V2 = 204,
  ORT_UPDATE_CUDA_OPTIONS = 206,
  ORT_CUDA_OPTIONS_AS_STRING = 207,
};
/* The API version whose table holds all of the above (onnxruntime 1.21). */
#define ORT_API_VERSION_NEEDED 21

/* OrtErrorCode values used here. */
enum { ORT_FAIL = 1, ORT_INVALID_ARGUMENT = 2 };
/* OrtAllocatorType and OrtMemType values used here. */
enum { ORT_ARENA_ALLOCATOR = 1, ORT_MEM_TYPE_DEFAULT = 0 };

typedef void *Status; /* OrtStatus*: NULL is success */
typedef struct {
  const void *(*GetApi)(uint32_t version);
  const char *(*GetVersionString)(void);
} ApiBase;
typedef const ApiBase *(*GetApiBaseFn)(void);

typedef Status (*CreateStatusFn)(int code, const char *message);
typedef const char *(*GetErrorMessageFn)(const Status);
typedef void (*ReleaseStatusFn)(Status);
typedef Status (*CreateSessionFn)(const void *env, const char *path, const void *options, void **session);
typedef Status (*CreateSessionFromArrayFn)(const void *env, const void *data, size_t length, const void *options,
                                           void **session);
typedef Status (*RunFn)(void *session, const void *run_options, const char *const *input_names,
                        const void *const *inputs, size_t input_count, const char *const *output_names,
                        size_t output_count, void **outputs);
typedef void (*ReleaseFn)(void *object);
typedef Status (*SessionGetCountFn)(const void *session, size_t *count);
typedef Status (*SessionGetNameFn)(const void *session, size_t index, void *allocator, char **name);
typedef Status (*RunOptionsGetRunTagFn)(const void *run_options, const char **tag);
typedef Status (*CreateTensorAsOrtValueFn)(void *allocator, const int64_t *shape, size_t rank, int type,
                                           void **value);
typedef Status (*GetTensorMutableDataFn)(void *value, void **data);
typedef Status (*GetTensorTypeAndShapeFn)(const void *value, void **info);
typedef Status (*GetTensorElementTypeFn)(const void *info, int *type);
typedef Status (*GetDimensionsCountFn)(const void *info, size_t *rank);
typedef Status (*GetDimensionsFn)(const void *info, int64_t *dims, size_t rank);
typedef Status (*CreateMemoryInfoFn)(const char *name, int allocator_type, int device_id, int mem_type,
                                     void **info);
typedef Status (*GetAllocatorFn)(void **allocator);
typedef Status (*AllocatorFreeFn)(void *allocator, void *p);
typedef Status (*CreateAllocatorFn)(const void *session, const void *memory_info, void **allocator);
typedef Status (*RunWithBindingFn)(void *session, const void *run_options, const void *binding);
typedef Status (*CreateIoBindingFn)(void *session, void **binding);
typedef Status (*BindValueFn)(void *binding, const char *name, const void *value);
typedef Status (*BindOutputToDeviceFn)(void *binding, const char *name, const void *memory_info);
typedef Status (*GetBoundOutputValuesFn)(const void *binding, void *allocator, void ***values, size_t *count);
typedef void (*ClearBoundOutputsFn)(void *binding);
typedef Status (*AppendCudaFn)(void *session_options, const void *cuda_options);
typedef Status (*UpdateCudaOptionsFn)(void *cuda_options, const char *const *keys, const char *const *values,
                                      size_t n);
typedef Status (*CudaOptionsAsStringFn)(const void *cuda_options, void *allocator, char **out);

/* The OrtApi table of the libonnxruntime the binding loaded (cuda-provider-options.c finds it). */
extern void **ort_api;
#define API(fn_type, index) ((fn_type)ort_api[index])

/* Replaces one entry of the table (which lives in read-only memory after relocation); 0 on success. */
int patch_api_entry(int index, void *fn);

/* bound-runs.c: patches Run, CreateSession(FromArray) and ReleaseSession (once, after ort_api is found). */
int bound_runs_install(void);
/* The CUDA append passed on `session_options` for `device_id`: the session created from them is bound when
 * `graphs` (enable_cuda_graph=1) or when it has carried state (carry.* outputs, bound-runs.c). */
void bound_runs_expect(const void *session_options, int device_id, int graphs);
/* Every session created while on (any provider; host memory when not CUDA) is bound: for tests on CPU. */
void bound_runs_for_all(int on);
/* Sessions bound now, and runs done bound since the start. */
void bound_runs_counts(uint32_t *sessions, uint32_t *runs);
/* A host buffer of `bytes` for the carried input `name` into *data; 0, or -1 (the copy then stops). */
typedef int (*CarriedBufferFn)(void *context, const char *name, size_t bytes, void **data);
/* Copies the carried inputs of the session whose last run was tagged carry:<id>:… into buffers from `make`;
 * 0, or -1 with the reason in `why`. */
int bound_runs_carried(const char *id, CarriedBufferFn make, void *context, char *why, size_t why_size);

#endif
