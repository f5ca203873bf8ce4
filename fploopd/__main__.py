from fploopd.cli import main

raise SystemExit(main())
