from rlgf_cli.launch import main

main()
