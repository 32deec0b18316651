import { capi } from './capi.js';
import type { RuntimeName } from './names.js';
import { ortNode } from './ort-node.js';
import type { Runtime } from './runtime.js';

export { defaultRuntime, parseRuntime, RUNTIMES, type RuntimeName } from './names.js';

/**
 * The bindings of ONNX Runtime steerd can run on, by name (docs/architecture.md §7 Runtimes; the
 * names: names.ts): `node`, onnxruntime-node (ort-node.ts); `capi`, ONNX Runtime's C API over the
 * same library, through I/O binding (capi.ts). A runner is given a name, not a binding: its options
 * cross into the engine thread as structured clones, and a binding is code. A new binding is a
 * module beside these, named here and in names.ts.
 */
const BINDINGS: Record<RuntimeName, Runtime> = { node: ortNode, capi };

export const runtimeNamed = (name: RuntimeName): Runtime => BINDINGS[name];
