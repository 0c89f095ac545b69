"""Command-line tools of the runtime (`sopi-demo`, `sopi-register`, `sopi-latency`,
`sopi-build-engines`): thin layers over the library. Exit codes, for every sopi CLI: 0 ok,
1 the job ran but its result was not accepted (registration failed / not confident, a check
failed), 2 usage or input error (bad arguments, unreadable or invalid files)."""
