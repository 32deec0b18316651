import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import type Koffi from 'koffi';
import { OrtError } from '../../errors.js';

/**
 * ONNX Runtime's C API reached through koffi (an FFI: no compiler, no build step; docs/architecture.md
 * §7 Runtimes): the `libonnxruntime.so.1` that onnxruntime-node ships, its `OrtGetApiBase()`, and the
 * few functions of the `OrtApi` table that the capi binding (capi.ts) calls. The table is a struct
 * of function pointers whose order ONNX Runtime only ever appends to (onnxruntime_c_api.h, struct
 * OrtApi): each function below is declared here, by its index in that struct, with only the
 * arguments steerd passes. `loadOrt()` checks a few indices against what the library answers
 * before anything else runs (a status made and read back, the CPU memory info's name, the
 * provider list). Every status an ORT function returns becomes an `OrtError` (errors.ts) and is
 * released here: nothing native throws, and the process lives.
 */

/** The API version asked of `GetApi`: ONNX Runtime 1.30's, the library onnxruntime-node ships. */
export const ORT_API_VERSION = 30;

/** ONNXTensorElementDataType. */
export const ELEMENT = { float32: 1, int64: 7, bool: 9 } as const;
/** OrtAllocatorType: an arena. */
const ARENA_ALLOCATOR = 1;
/** OrtMemType: the provider's default memory. */
const MEM_DEFAULT = 0;
/** GraphOptimizationLevel: every optimisation (onnxruntime-node's `all`). */
export const OPTIMIZE_ALL = 99;
/** OrtLoggingLevel: errors only. */
export const LOG_ERROR = 3;

/** A native handle (koffi hands pointers over as opaque values). */
export type Handle = unknown;

/** The OrtApi functions steerd uses: index in struct OrtApi, and signature (status-returning unless noted). */
const DECLS = {
  CreateStatus: [0, 'void *CreateStatus(int code, const char *msg)'],
  GetErrorCode: [1, 'int GetErrorCode(void *status)'],
  GetErrorMessage: [2, 'const char *GetErrorMessage(void *status)'],
  CreateEnv: [3, 'void *CreateEnv(int level, const char *logid, _Out_ void **out)'],
  CreateSession: [7, 'void *CreateSession(void *env, const char *path, void *options, _Out_ void **out)'],
  CreateSessionFromArray: [
    8,
    'void *CreateSessionFromArray(void *env, void *data, size_t len, void *options, _Out_ void **out)',
  ],
  CreateSessionOptions: [10, 'void *CreateSessionOptions(_Out_ void **out)'],
  SetSessionLogSeverityLevel: [22, 'void *SetSessionLogSeverityLevel(void *options, int level)'],
  SetSessionGraphOptimizationLevel: [23, 'void *SetSessionGraphOptimizationLevel(void *options, int level)'],
  SetIntraOpNumThreads: [24, 'void *SetIntraOpNumThreads(void *options, int n)'],
  SessionGetOutputCount: [31, 'void *SessionGetOutputCount(void *session, _Out_ size_t *out)'],
  SessionGetOutputName: [37, 'void *SessionGetOutputName(void *session, size_t i, void *allocator, _Out_ void **out)'],
  CreateTensorAsOrtValue: [
    48,
    'void *CreateTensorAsOrtValue(void *allocator, int64_t *shape, size_t rank, int type, _Out_ void **out)',
  ],
  GetTensorMutableData: [51, 'void *GetTensorMutableData(void *value, _Out_ void **out)'],
  GetTensorElementType: [60, 'void *GetTensorElementType(void *info, _Out_ int *out)'],
  GetDimensionsCount: [61, 'void *GetDimensionsCount(void *info, _Out_ size_t *out)'],
  GetDimensions: [62, 'void *GetDimensions(void *info, int64_t *dims, size_t rank)'],
  GetTensorTypeAndShape: [65, 'void *GetTensorTypeAndShape(void *value, _Out_ void **out)'],
  CreateMemoryInfo: [68, 'void *CreateMemoryInfo(const char *name, int type, int id, int memType, _Out_ void **out)'],
  CreateCpuMemoryInfo: [69, 'void *CreateCpuMemoryInfo(int type, int memType, _Out_ void **out)'],
  MemoryInfoGetName: [71, 'void *MemoryInfoGetName(void *info, _Out_ const char **out)'],
  AllocatorFree: [76, 'void *AllocatorFree(void *allocator, void *p)'],
  GetAllocatorWithDefaultOptions: [78, 'void *GetAllocatorWithDefaultOptions(_Out_ void **out)'],
  ReleaseStatus: [93, 'void ReleaseStatus(void *p)'],
  ReleaseMemoryInfo: [94, 'void ReleaseMemoryInfo(void *p)'],
  ReleaseSession: [95, 'void ReleaseSession(void *p)'],
  ReleaseValue: [96, 'void ReleaseValue(void *p)'],
  ReleaseTensorTypeAndShapeInfo: [99, 'void ReleaseTensorTypeAndShapeInfo(void *p)'],
  ReleaseSessionOptions: [100, 'void ReleaseSessionOptions(void *p)'],
  GetAvailableProviders: [125, 'void *GetAvailableProviders(_Out_ void **out, _Out_ int *n)'],
  ReleaseAvailableProviders: [126, 'void *ReleaseAvailableProviders(void *p, int n)'],
  AddSessionConfigEntry: [130, 'void *AddSessionConfigEntry(void *options, const char *key, const char *value)'],
  RunWithBinding: [133, 'void *RunWithBinding(void *session, void *runOptions, void *binding)'],
  CreateIoBinding: [134, 'void *CreateIoBinding(void *session, _Out_ void **out)'],
  ReleaseIoBinding: [135, 'void ReleaseIoBinding(void *p)'],
  BindInput: [136, 'void *BindInput(void *binding, const char *name, void *value)'],
  BindOutputToDevice: [138, 'void *BindOutputToDevice(void *binding, const char *name, void *memInfo)'],
  GetBoundOutputValues: [
    140,
    'void *GetBoundOutputValues(void *binding, void *allocator, _Out_ void **out, _Out_ size_t *count)',
  ],
  ClearBoundInputs: [141, 'void ClearBoundInputs(void *binding)'],
  ClearBoundOutputs: [142, 'void ClearBoundOutputs(void *binding)'],
  GetTensorMemoryInfo: [194, 'void *GetTensorMemoryInfo(void *value, _Out_ void **out)'],
  // the CUDA provider (unexercised without a GPU: npm run gpu-check calls them first)
  SessionOptionsAppendExecutionProvider_CUDA_V2: [
    204,
    'void *SessionOptionsAppendExecutionProvider_CUDA_V2(void *options, void *cudaOptions)',
  ],
  CreateCUDAProviderOptions: [205, 'void *CreateCUDAProviderOptions(_Out_ void **out)'],
  UpdateCUDAProviderOptions: [
    206,
    'void *UpdateCUDAProviderOptions(void *cudaOptions, const char **keys, const char **values, size_t n)',
  ],
  ReleaseCUDAProviderOptions: [208, 'void ReleaseCUDAProviderOptions(void *p)'],
} as const;

type Fn = (...args: unknown[]) => unknown;
export type OrtApi = { -readonly [K in keyof typeof DECLS]: Fn };

/** What the capi binding holds of the library: the table, one environment, the default allocator, CPU memory. */
export interface Ort {
  readonly api: OrtApi;
  readonly version: string;
  readonly env: Handle;
  readonly allocator: Handle;
  readonly cpuMemory: Handle;
  /** Execution providers the library was built with (ONNX Runtime's names: `CPUExecutionProvider`, ...). */
  readonly providers: string[];
}

/** The library onnxruntime-node ships, beside its addon (bin/napi-v6/<platform>/<arch>/). */
export function libraryPath(): string {
  const require = createRequire(import.meta.url);
  const root = dirname(require.resolve('onnxruntime-node'));
  // its main is dist/index.js: the package root is one folder up
  return join(root, '..', 'bin', 'napi-v6', process.platform, process.arch, 'libonnxruntime.so.1');
}

let loaded: Ort | undefined;
/**
 * koffi, required when the binding is first used: an engine on onnxruntime-node never loads it, and
 * a platform without its prebuilt binary fails here, naming it, not when the bindings are imported.
 */
let koffi: typeof Koffi;

/**
 * Throws the `OrtError` a status carries (and releases it); a null status is success. `call` names
 * the ORT function in the message.
 */
export function check(api: OrtApi, status: unknown, call: string): void {
  if (status === null || status === undefined || status === 0n) return;
  const code = api.GetErrorCode(status) as number;
  const message = api.GetErrorMessage(status) as string;
  api.ReleaseStatus(status);
  throw new OrtError(call, code, message);
}

/** The library, loaded and checked once per thread (koffi's handles do not cross worker threads). */
export function loadOrt(path = libraryPath()): Ort {
  if (loaded) return loaded;
  let lib: ReturnType<typeof Koffi.load>;
  try {
    koffi ??= createRequire(import.meta.url)('koffi') as typeof Koffi;
    lib = koffi.load(path);
  } catch (e) {
    throw new OrtError('load', -1, `cannot load ${path}: ${(e as Error).message}`);
  }
  const base = lib.func('void *OrtGetApiBase(void)')() as Handle;
  const [getApi, getVersion] = koffi.decode(base, 'void *', 2) as Handle[];
  const version = koffi.call(getVersion, koffi.proto('const char *OrtGetVersionString(void)')) as string;
  const table = koffi.call(getApi, koffi.proto('void *OrtGetApi(uint32_t version)'), ORT_API_VERSION) as Handle;
  if (table === null) {
    throw new OrtError(
      'GetApi',
      -1,
      `ONNX Runtime ${version} at ${path} does not offer API version ${ORT_API_VERSION}`,
    );
  }
  const last = Math.max(...Object.values(DECLS).map(([i]) => i));
  const fns = koffi.decode(table, 'void *', last + 1) as Handle[];
  const api = {} as OrtApi;
  for (const [name, [i, sig]] of Object.entries(DECLS)) {
    // a function pointer decoded with its prototype is callable as it is (a quarter of koffi.call's cost)
    api[name as keyof OrtApi] = koffi.decode(fns[i], koffi.proto(sig)) as Fn;
  }
  verify(api);
  const out = (): Handle[] => [null];
  const env = out();
  check(api, api.CreateEnv(LOG_ERROR, 'steerd', env), 'CreateEnv');
  const allocator = out();
  check(api, api.GetAllocatorWithDefaultOptions(allocator), 'GetAllocatorWithDefaultOptions');
  const cpu = out();
  check(api, api.CreateCpuMemoryInfo(ARENA_ALLOCATOR, MEM_DEFAULT, cpu), 'CreateCpuMemoryInfo');
  const list = out();
  const n = [0];
  check(api, api.GetAvailableProviders(list, n), 'GetAvailableProviders');
  const providers = koffi.decode(list[0], 'const char *', n[0]) as string[];
  check(api, api.ReleaseAvailableProviders(list[0], n[0]), 'ReleaseAvailableProviders');
  if (!providers.includes('CPUExecutionProvider')) {
    throw new OrtError('GetAvailableProviders', -1, `unexpected provider list: ${providers.join(', ')}`);
  }
  loaded = { api, version, env: env[0], allocator: allocator[0], cpuMemory: cpu[0], providers };
  return loaded;
}

/**
 * The table's indices checked where the library can answer without side effects: a status made
 * (0) and read back (1, 2) and released (93); the CPU memory info (69) named `Cpu` (71), released (94).
 */
function verify(api: OrtApi): void {
  const wrong = (what: string) => {
    throw new OrtError('verify', -1, `the OrtApi table does not match steerd's declarations (${what})`);
  };
  const s = api.CreateStatus(2, 'steerd-probe');
  if (api.GetErrorCode(s) !== 2 || api.GetErrorMessage(s) !== 'steerd-probe') wrong('CreateStatus');
  api.ReleaseStatus(s);
  const info: Handle[] = [null];
  check(api, api.CreateCpuMemoryInfo(ARENA_ALLOCATOR, MEM_DEFAULT, info), 'CreateCpuMemoryInfo');
  const name: Handle[] = [null];
  check(api, api.MemoryInfoGetName(info[0], name), 'MemoryInfoGetName');
  if (name[0] !== 'Cpu') wrong(`memory info named ${String(name[0])}`);
  api.ReleaseMemoryInfo(info[0]);
}

/** The memory info of a CUDA device's default memory (BindOutputToDevice's target on `--provider cuda`). */
export function cudaMemory(ort: Ort, deviceId: number): Handle {
  const info: Handle[] = [null];
  check(ort.api, ort.api.CreateMemoryInfo('Cuda', ARENA_ALLOCATOR, deviceId, MEM_DEFAULT, info), 'CreateMemoryInfo');
  return info[0];
}

/** Appends the CUDA provider on `deviceId` to session options (its libraries load here: a failure is an OrtError). */
export function appendCuda(ort: Ort, options: Handle, deviceId: number): void {
  const { api } = ort;
  const cuda: Handle[] = [null];
  check(api, api.CreateCUDAProviderOptions(cuda), 'CreateCUDAProviderOptions');
  try {
    check(
      api,
      // the arena grows by what is asked (its default doubles, holding up to twice the KV cache)
      api.UpdateCUDAProviderOptions(
        cuda[0],
        ['device_id', 'arena_extend_strategy'],
        [String(deviceId), 'kSameAsRequested'],
        2,
      ),
      'UpdateCUDAProviderOptions',
    );
    check(
      api,
      api.SessionOptionsAppendExecutionProvider_CUDA_V2(options, cuda[0]),
      'SessionOptionsAppendExecutionProvider_CUDA_V2',
    );
  } finally {
    api.ReleaseCUDAProviderOptions(cuda[0]);
  }
}

/** Copies `bytes` bytes of native memory at `ptr` into a new ArrayBuffer. */
export const copyOut = (ptr: Handle, bytes: number): ArrayBuffer =>
  bytes === 0 ? new ArrayBuffer(0) : koffi.view(ptr, bytes).slice(0);

/** Copies a typed array into native memory at `ptr`. */
export function copyIn(ptr: Handle, src: ArrayBufferView): void {
  if (src.byteLength === 0) return;
  new Uint8Array(koffi.view(ptr, src.byteLength)).set(new Uint8Array(src.buffer, src.byteOffset, src.byteLength));
}

/** A string the default allocator made (an output name), read and given back. */
export function takeString(ort: Ort, p: Handle): string {
  const s = koffi.decode(p, 'char', -1) as string;
  check(ort.api, ort.api.AllocatorFree(ort.allocator, p), 'AllocatorFree');
  return s;
}

/** `n` pointers at `p` (an array the default allocator made), read and the array given back. */
export function takePointers(ort: Ort, p: Handle, n: number): Handle[] {
  if (n === 0 || p === null) return [];
  const list = koffi.decode(p, 'void *', n) as Handle[];
  check(ort.api, ort.api.AllocatorFree(ort.allocator, p), 'AllocatorFree');
  return list;
}
