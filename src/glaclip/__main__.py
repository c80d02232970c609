from glaclip.cli import main

raise SystemExit(main())
