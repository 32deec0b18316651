// Load-tests a steerd server: `npm run loadtest -- --help` for the options, src/loadtest/ for the code.
import { main } from '../src/loadtest/main.ts';

process.exitCode = await main(process.argv);
