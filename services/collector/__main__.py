from .lean import main

raise SystemExit(main())
