#!/usr/bin/env node
// Runs the TypeScript sources directly (tsx), so that `npm ci` leaves the CLI ready without a build.
import { register } from 'tsx/esm/api';

register();
const { main } = await import('../src/cli/main.ts');
await main(process.argv);
