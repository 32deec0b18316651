/**
 * The execution provider the engine and API suites run on: `cpu` unless STEERD_TEST_PROVIDER says
 * otherwise (CI runs them again with `webgpu` on a software Vulkan device: README, Tests).
 */
export const provider = process.env.STEERD_TEST_PROVIDER ?? 'cpu';
