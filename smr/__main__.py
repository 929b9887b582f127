from smr.cli import main

raise SystemExit(main())
