/**
 * The import structure `npm run lint` holds (dependency-cruiser). The layers, each importing only
 * those below it: cli → server → app → routes → api / queue / store → engine → model → util.
 * Type-only imports count: a type from a higher layer ties the lower one to it just the same.
 */

/** Packages that carry HTTP or Redis, which the engine must work without. */
const SERVICE_PACKAGES = '(^|/)node_modules/(fastify|@fastify/[^/]+|bullmq|ioredis)/';

module.exports = {
  forbidden: [
    {
      name: 'no-circular',
      comment: 'An import circle: modules that cannot be read, tested or loaded one without the other.',
      severity: 'error',
      from: { path: '^(src|routes|scripts|bench)/' },
      to: { circular: true },
    },
    {
      name: 'engine-below-the-service',
      comment:
        'The engine runs in a worker thread and in `steerd worker` processes: it knows nothing of HTTP, ' +
        'the queue, the vector store, the routes or the processes that host it.',
      severity: 'error',
      from: { path: '^src/engine/' },
      to: {
        path: [SERVICE_PACKAGES, '^src/(api|queue|store|cli|loadtest)/', '^routes/', '^src/(server|app|spec)\\.ts$'],
      },
    },
    {
      name: 'one-runtime-seam',
      comment:
        'Only the runtime seam (src/engine/runtime/) binds ONNX Runtime: the scheduler, the KV cache and ' +
        'the graph builders run on whatever binding it names (docs/architecture.md §7).',
      severity: 'error',
      from: { path: '^(src|routes)/', pathNot: '^src/engine/runtime/' },
      to: { path: ['(^|/)node_modules/onnxruntime-[^/]+/', '(^|/)node_modules/koffi/'] },
    },
    {
      name: 'one-ffi-module',
      comment:
        "The capi binding reaches ONNX Runtime's C API through one module (capi-ffi.ts): the declarations " +
        'of the OrtApi table and the checks of its indices are in one place (docs/architecture.md §7).',
      severity: 'error',
      from: { path: '^(src|routes|scripts|bench)/', pathNot: '^src/engine/runtime/capi-ffi\\.ts$' },
      to: { path: '(^|/)node_modules/koffi/' },
    },
    {
      name: 'model-below-the-engine',
      comment: 'A model (graph, weights, tokenizer) is built and loaded without the engine that runs it.',
      severity: 'error',
      from: { path: '^src/model/' },
      to: {
        path: [
          SERVICE_PACKAGES,
          '^src/(engine|api|queue|store|cli|loadtest)/',
          '^routes/',
          '^src/(server|app|spec)\\.ts$',
        ],
      },
    },
    {
      name: 'processes-on-top',
      comment:
        'The CLI starts the server, the server builds the app (spec.ts builds it for the OpenAPI document): ' +
        'the layers they host import none of them.',
      severity: 'error',
      from: {
        path: ['^routes/', '^src/(api|queue|store|engine|model|util|loadtest)/', '^src/(config|errors|logging)\\.ts$'],
      },
      to: { path: ['^src/(app|spec|server)\\.ts$', '^src/cli/'] },
    },
    {
      name: 'app-below-the-server',
      comment: 'The app and the OpenAPI document are built without the server process or the CLI.',
      severity: 'error',
      from: { path: '^src/(app|spec)\\.ts$' },
      to: { path: ['^src/server\\.ts$', '^src/cli/'] },
    },
    {
      name: 'server-below-the-cli',
      comment: 'The CLI parses the command line and starts the server; the server does not know the CLI.',
      severity: 'error',
      from: { path: '^src/server\\.ts$' },
      to: { path: '^src/cli/' },
    },
    {
      name: 'routes-only-from-the-app',
      comment: 'The app registers the routes; nothing else in src/ reaches into them.',
      severity: 'error',
      from: { path: '^src/', pathNot: '^src/app\\.ts$' },
      to: { path: '^routes/' },
    },
    {
      name: 'nothing-imports-scripts-or-bench',
      comment: 'Scripts and benchmarks use the code; the code does not use them.',
      severity: 'error',
      from: { path: '^(src|routes)/' },
      to: { path: '^(scripts|bench)/' },
    },
    {
      name: 'nothing-imports-tests',
      comment: 'Tests and their helpers are not part of what ships.',
      severity: 'error',
      from: { pathNot: '^test/' },
      to: { path: '^test/' },
    },
  ],
  options: {
    doNotFollow: { path: 'node_modules' },
    tsConfig: { fileName: 'tsconfig.json' },
    tsPreCompilationDeps: true,
    // Packages are resolved as Node resolves them (their `exports`), so that the rules see the
    // package an import names.
    enhancedResolveOptions: {
      exportsFields: ['exports'],
      conditionNames: ['import', 'require', 'node', 'default', 'types'],
      mainFields: ['module', 'main', 'types', 'typings'],
    },
  },
};
