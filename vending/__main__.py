from vending.cli import main

raise SystemExit(main())
