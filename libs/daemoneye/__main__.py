from daemoneye.console.cli import main

raise SystemExit(main())
