from reference_app.app import main

raise SystemExit(main())
