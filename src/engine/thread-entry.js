// Worker threads start without the parent's TypeScript loader when the parent registered it at run
// time (bin/steerd.js): register it here, then load the engine thread.
import { register } from 'tsx/esm/api';

register();
await import('./thread.ts');
