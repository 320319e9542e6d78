from rbacbridge.cli import main

main()
