from rlgf_cli.app import main

main()
